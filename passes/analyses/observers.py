"""Observers: what calibration keeps of a value's data to choose its clipping range.

An observer sees a value's batches one at a time (`update`), keeps a fixed-size state
whatever the number of batches, merges with an observer that saw another shard of the
data (`merge`), and answers a clipping range (`range`) and the parameters for it
(`quant_params`). Observers are registered by name, as passes are, and are picklable:
they travel to worker processes and into calibration cache files. `observe` feeds
fresh observers every batch of some data through one tap of the float model: the
calibrate pass, smooth-quant and the driver's distribution-shift check all measure so.

1. minmax: the exact extremes; per tensor, or per channel with `axis`.
   Merged shards equal one pass over all the data exactly.
2. ema-minmax: a moving average of each batch's extremes (ONNX Runtime's
   moving-average calibration): lo += c * (batch_lo - lo). An average depends on the
   order of batches, so merge weights each shard's average by its batch count.
3. percentile, entropy, mse: choose the range from a histogram (below).

The histogram: `bins` cells of width w = 2**e, cell k holding [k*w, (k+1)*w); the
cells are a window over that zero-anchored grid covering the data widened to include 0
(quantization ranges always do, and 0 being an edge folds x into |x| exactly). The
width is the smallest power of two for which `bins` cells cover [min(x, 0), max(x, 0)].
When new data widens the range the width doubles as often as needed and each new cell
is the sum of whole old cells (integer factors, so re-binning moves no count across an
edge); the cell count never grows. Because the width depends only on the overall
extremes and re-binning is exact, the counts after any sequence of updates and merges
are the counts one pass over all the data gives: merged shards and all-at-once agree
exactly (tolerance zero), and so do the ranges chosen from them. The cost of
power-of-two widths: the data spans between bins/2 and bins cells.

    bins=8, data in [-0.3, 1.1]:  w = 0.25, cells -2..5 cover [-0.5, 1.5)
    then a batch reaching 2.9:    w = 0.5,  cells -1..6 cover [-0.5, 3.5);
                                  new cell k holds old cells 2k and 2k+1
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Iterator
from typing import Any, ClassVar, Union

import numpy as np

from qcompiler.ir import DType, Model, QuantParams, Value, computation_digest
from qcompiler.ir.naming import unique_names
from qcompiler.ir.evaluate import ValueTap, first_rows

from ..infra.base import PassError
from ..infra.pipeline import build_options
from ..infra.progress import Progress
from ..infra.registry import Registry


class Observer:
    """Base of every observer. Subclasses set `name` and `Options`, implement `_update`,
    `_merge` (other has data; self may not) and `_range`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type]

    def __init__(self, **options: Any) -> None:
        self.options = _build_options(type(self), options)
        self.observed = 0
        self._extremes: tuple[Any, Any] | None = None  # the last batch's min and max (update)

    @property
    def axis(self) -> int | None:
        """The channel axis of per-channel ranges; None for one range per tensor."""
        return None

    def update(self, array: np.ndarray) -> None:
        """Observe one batch of the value; an empty batch changes nothing."""
        x = np.asarray(array)
        if x.dtype.kind not in "fiu":
            raise TypeError(f"observer {self.name!r} takes numeric arrays, not {x.dtype}")
        # the batch's extremes, reduced once: they show NaN/Inf, and per-tensor observers reuse them
        self._extremes = (x.min(), x.max()) if x.size else None
        if x.size and x.dtype.kind == "f" and not (np.isfinite(self._extremes[0]) and np.isfinite(self._extremes[1])):
            finite = np.isfinite(x)  # NaN and Inf always reach min or max: count only when present
            nans = int(np.isnan(x).sum())
            raise ValueError(f"observer {self.name!r}: the batch holds {nans} NaN and "
                             f"{x.size - nans - int(finite.sum())} infinite values (of {x.size}); "
                             "a range needs finite data")
        if x.size:
            self._update(x)
            self.observed += x.size

    def merge(self, other: Observer) -> None:
        """Fold in an observer of the same kind and options that saw other data."""
        if type(other) is not type(self) or other.options != self.options:
            raise ValueError(f"cannot merge observer {other.name!r} {other.options} into {self.name!r} {self.options}")
        if other.observed:
            self._merge(other)
            self.observed += other.observed

    def range(self) -> tuple[Any, Any]:
        """The clipping range (lo, hi): floats, or arrays per channel."""
        if not self.observed:
            raise RuntimeError(f"observer {self.name!r} has seen no data; call update() first")
        return self._range()

    def quant_params(self, dtype: DType, *, symmetric: bool) -> QuantParams:
        """Parameters covering `range()` (see QuantParams.from_range for the conventions)."""
        lo, hi = self.range()
        return QuantParams.from_range(lo, hi, dtype, symmetric=symmetric, axis=self.axis)

    def _update(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _merge(self, other: Observer) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[Any, Any]:
        raise NotImplementedError


_OBSERVERS: Registry[type[Observer]] = Registry("observer")


def register_observer(cls: type[Observer]) -> type[Observer]:
    """Class decorator: make an observer known by its name; a taken name is refused."""
    return _OBSERVERS.register(cls)


def get_observer(name: str) -> type[Observer]:
    return _OBSERVERS.get(name)


def registered_observers() -> dict[str, type[Observer]]:
    return _OBSERVERS.all()


def observe(model: Model, values: list[Value], specs: list[tuple], data, progress: Progress, *,
            rows: int = 0, store: Observations | None = None, threads: int = 0,
            empty_ok: bool = False) -> tuple[list[Observer], int]:
    """Observers of `values` (specs: (observer name, options) pairs; a value may come several
    times, with several specs) fed every batch of `data` (its first `rows` rows when > 0) by
    one session over the float model; (observers, batches seen). With a `store`, what an
    earlier compile measured the same way is reused (`Observations`).

    Raises PassError when `data` holds no batch, unless `empty_ok` (a worker's shard may be empty).
    """
    if store is not None:
        return store.observe(model, values, specs, data, progress, rows=rows, threads=threads, empty_ok=empty_ok)
    return _fed(model, values, specs, first_rows(data, rows) if rows else data, progress, threads=threads,
                empty_ok=empty_ok)


def _fed(model: Model, values: list[Value], specs: list[tuple], data, progress: Progress, *,
         threads: int, empty_ok: bool) -> tuple[list[Observer], int]:
    observers = [get_observer(name)(**dict(options)) for name, options in specs]
    tapped = list(dict.fromkeys(values))
    place = {value: i for i, value in enumerate(tapped)}
    counted: list[int] = []
    for batch, arrays in enumerate(tapped_batches(model, tapped, data, progress, threads=threads,
                                                  empty_ok=empty_ok, count=counted)):
        for value, observer in zip(values, observers):
            try:
                observer.update(arrays[place[value]])
            except ValueError as err:
                raise PassError(f"calibration batch {batch}: value %{value.name}: {err}") from None
        del arrays  # before the next batch is run: one batch of activations at a time
    return observers, counted[0]


class Observations:
    """Observers already fed, kept for compiles that repeat a measurement (the rungs of auto's
    ladder all calibrate the same fused model on the same data).

    1. An entry is keyed by the computation (`ir.computation_digest`: the model without the
       marks passes leave on it), the data (its fingerprint), the value (its printed name)
       and the observer spec. Data without a fingerprint is measured afresh every time.
    2. `companions` maps a spec to specs fed beside it, in the same pass over the data, for
       compiles to come: observing min-max now can answer a percentile rung's ask later.
    3. What is handed out is a copy: a compile may keep and change the observers it got.
    4. `passes` counts the passes over data made, `reused` the asks answered from the store.
    """

    def __init__(self, companions: dict[tuple, tuple[tuple, ...]] | None = None) -> None:
        self.companions = dict(companions or {})
        self._found: dict[tuple, Observer] = {}
        self._batches: dict[tuple[str, str], int] = {}
        self.passes = self.reused = 0

    def observe(self, model: Model, values: list[Value], specs: list[tuple], data, progress: Progress, *,
                rows: int, threads: int, empty_ok: bool) -> tuple[list[Observer], int]:
        """`observe(...)`'s answer over `data` (its first `rows` rows when > 0), from the store where
        all of it is there."""
        feeds, options = (first_rows(data, rows) if rows else data), {"threads": threads, "empty_ok": empty_ok}
        source = _fingerprint(data)
        if source is None:
            return _fed(model, values, specs, feeds, progress, **options)
        where = (computation_digest(model), f"{source}|rows={rows}")
        names = unique_names(model.graph)
        asked = [(*where, names[v], tuple(spec)) for v, spec in zip(values, specs)]
        if where not in self._batches or any(key not in self._found for key in asked):
            wanted = list(dict.fromkeys([*zip(values, map(tuple, specs)),
                                         *((v, extra) for v, spec in zip(values, specs)
                                           for extra in self.companions.get(tuple(spec), ()))]))
            fed, batches = _fed(model, [v for v, _ in wanted], [spec for _, spec in wanted], feeds, progress,
                                **options)
            self.passes += 1
            self._batches[where] = batches
            for (value, spec), observer in zip(wanted, fed):
                self._found[(*where, names[value], spec)] = observer
        else:
            self.reused += 1
            progress.close()
        return [copy.deepcopy(self._found[key]) for key in asked], self._batches[where]


def _fingerprint(data) -> str | None:
    try:
        return data.fingerprint()
    except (AttributeError, NotImplementedError):
        return None


def tapped_batches(model: Model, values: list[Value], data, progress: Progress, *, threads: int = 0,
                   empty_ok: bool = False, count: list[int] | None = None) -> Iterator[list[np.ndarray]]:
    """The arrays of `values` for each batch of `data`, from one session over the float model;
    `progress` advances per batch. The generator keeps no batch: a reader that drops each one
    before asking for the next holds one batch of activations, as a memory budget assumes.

    Once exhausted, appends the number of batches to `count` when given; raises PassError when
    `data` held no batch, unless `empty_ok`.
    """
    tap = ValueTap(model, values, threads=threads)
    batches = 0
    try:
        for feeds in data:
            yield tap.run(feeds)
            batches += 1
            progress.advance()
    finally:
        progress.close()
    if batches == 0 and not empty_ok:
        raise PassError("the calibration data holds no samples")
    if count is not None:
        count.append(batches)


# -- min-max ----------------------------------------------------------------------------


class _Extremes(Observer):
    """Per-batch minimum and maximum, per tensor or per channel along `axis`."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.lo: np.ndarray | None = None  # float64; shape () per tensor, (channels,) per channel
        self.hi: np.ndarray | None = None

    @property
    def axis(self) -> int | None:
        return self.options.axis

    def _batch_extremes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        axis = self.options.axis
        if axis is None:
            lo, hi = self._extremes  # update() reduced this batch already
            return np.float64(lo), np.float64(hi)
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"observer {self.name!r}: axis {axis} is out of range for a batch of shape {x.shape}")
        others = tuple(d for d in range(x.ndim) if d != axis % x.ndim)
        lo, hi = x.min(axis=others).astype(np.float64), x.max(axis=others).astype(np.float64)
        self._check_channels(lo)
        return lo, hi

    def _check_channels(self, lo: np.ndarray) -> None:
        if self.lo is not None and np.shape(lo) != np.shape(self.lo):
            raise ValueError(f"observer {self.name!r} (axis={self.options.axis}) saw {np.size(self.lo)} "
                             f"channels, now {np.size(lo)}")

    def _range(self) -> tuple[Any, Any]:
        if self.options.axis is None:
            return float(self.lo), float(self.hi)
        return self.lo.copy(), self.hi.copy()


@register_observer
class MinMaxObserver(_Extremes):
    """The smallest and largest value seen."""

    name = "minmax"

    @dataclasses.dataclass
    class Options:
        axis: int | None = None

    def _update(self, x: np.ndarray) -> None:
        self._widen(*self._batch_extremes(x))

    def _merge(self, other: MinMaxObserver) -> None:
        self._check_channels(other.lo)
        self._widen(other.lo, other.hi)

    def _widen(self, lo: np.ndarray, hi: np.ndarray) -> None:
        if self.lo is None:
            self.lo, self.hi = np.copy(lo), np.copy(hi)
        else:
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)


@register_observer
class EmaMinMaxObserver(_Extremes):
    """A moving average of each batch's minimum and maximum, damping rare extremes."""

    name = "ema-minmax"

    @dataclasses.dataclass
    class Options:
        axis: int | None = None
        averaging_constant: float = 0.01  # ONNX Runtime's default

        def __post_init__(self) -> None:
            if not 0 < self.averaging_constant <= 1:
                raise ValueError(f"averaging_constant must be in (0, 1], not {self.averaging_constant}")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.batches = 0

    def _update(self, x: np.ndarray) -> None:
        lo, hi = self._batch_extremes(x)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            c = self.options.averaging_constant
            self.lo, self.hi = self.lo + c * (lo - self.lo), self.hi + c * (hi - self.hi)
        self.batches += 1

    def _merge(self, other: EmaMinMaxObserver) -> None:
        self._check_channels(other.lo)
        if self.lo is None:
            self.lo, self.hi = np.copy(other.lo), np.copy(other.hi)
        else:
            mine = self.batches / (self.batches + other.batches)
            self.lo = mine * self.lo + (1 - mine) * other.lo
            self.hi = mine * self.hi + (1 - mine) * other.hi
        self.batches += other.batches


# -- histograms -------------------------------------------------------------------------

_MIN_EXPONENT = -149  # the smallest float32 subnormal; the width of an all-zero histogram


class Histogram:
    """Counts in `bins` cells of width 2**exponent; cell i of the window holds
    [(start + i) * width, (start + i + 1) * width). See the module docstring."""

    def __init__(self, bins: int) -> None:
        self.counts = np.zeros(bins, np.int64)
        self.exponent = _MIN_EXPONENT
        self.start = 0
        self.min, self.max = math.inf, -math.inf  # of the data, not the window

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    def add(self, x: np.ndarray) -> None:
        self._cover(min(self.min, float(x.min())), max(self.max, float(x.max())))
        cells = np.floor(x.ravel() / np.float64(self.width)).astype(np.int64) - self.start
        self.counts += np.bincount(cells, minlength=len(self.counts))

    def merge(self, other: Histogram) -> None:
        self._cover(min(self.min, other.min), max(self.max, other.max))
        self.counts += other._rebinned(self.exponent, self.start)

    def _cover(self, lo: float, hi: float) -> None:
        """Widen the window to [min(lo, 0), max(hi, 0)], re-binning what was counted."""
        lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
        if not math.isfinite(hi0 - lo0):
            raise ValueError(f"values from {lo} to {hi} span more than a float64 holds")
        exponent = _width_exponent(lo0, hi0, len(self.counts))
        start = math.floor(lo0 / math.ldexp(1.0, exponent))
        if (exponent, start) != (self.exponent, self.start):
            self.counts, self.exponent, self.start = self._rebinned(exponent, start), exponent, start
        self.min, self.max = lo, hi

    def _rebinned(self, exponent: int, start: int) -> np.ndarray:
        """Our counts on the window of cells of width 2**exponent (>= ours) from `start`."""
        filled = np.flatnonzero(self.counts)
        # filled cells hold data, so |cell| < bins: shifting by 62 already gives 0 or -1
        cells = (self.start + filled) >> min(exponent - self.exponent, 62)
        counts = np.zeros_like(self.counts)
        np.add.at(counts, cells - start, self.counts[filled])
        return counts

    def edges(self) -> np.ndarray:
        return (self.start + np.arange(len(self.counts) + 1)) * self.width

    def magnitudes(self) -> np.ndarray:
        """Counts of |x| in cells [k*w, (k+1)*w) up to the one holding max |x|, as floats.

        Folding is exact because 0 is an edge (a negative x lying exactly on an edge
        lands one cell lower than np.histogram of |x| would put it).
        """
        cells = self.start + np.arange(len(self.counts))
        folded = np.bincount(np.where(cells >= 0, cells, -cells - 1), weights=self.counts)
        return folded[: np.flatnonzero(folded)[-1] + 1]

    def quantile(self, fraction: float) -> float:
        """The value with `fraction` of the counts below it, linear inside a cell."""
        cumulative = np.cumsum(self.counts)
        target = fraction * cumulative[-1]
        cell = min(int(np.searchsorted(cumulative, target)), len(self.counts) - 1)
        count = self.counts[cell]
        inside = (target - (cumulative[cell] - count)) / count if count else 0.0
        return float((self.start + cell + inside) * self.width)


def _width_exponent(lo: float, hi: float, bins: int) -> int:
    """The smallest e >= _MIN_EXPONENT for which `bins` cells of width 2**e cover [lo, hi]."""
    exponent = _MIN_EXPONENT
    if hi > lo:  # a width under (hi - lo) / bins cannot fit; start just below it
        exponent = max(exponent, math.frexp((hi - lo) / bins)[1] - 1)
    while math.floor(hi / math.ldexp(1.0, exponent)) - math.floor(lo / math.ldexp(1.0, exponent)) >= bins:
        exponent += 1
    return exponent


@dataclasses.dataclass
class _HistogramOptions:
    bins: int = 2048

    def __post_init__(self) -> None:
        if self.bins < 16:
            raise ValueError(f"bins must be at least 16, not {self.bins}")


class _HistogramObserver(Observer):
    """Keeps a Histogram; subclasses choose the range from it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.histogram = Histogram(self.options.bins)

    @property
    def bin_width(self) -> float:
        return self.histogram.width

    def _update(self, x: np.ndarray) -> None:
        self.histogram.add(x)

    def _merge(self, other: _HistogramObserver) -> None:
        self.histogram.merge(other.histogram)


@register_observer
class PercentileObserver(_HistogramObserver):
    """Cuts the rarest (100 - percentile)% of values, half from each tail.

    Two-sided on x, as ONNX Runtime's asymmetric percentile calibration: lo is the
    (100 - p)/2-th percentile of x and hi the (100 + p)/2-th, each within one bin width
    of np.percentile, and never beyond the data's extremes.
    """

    name = "percentile"

    @dataclasses.dataclass
    class Options(_HistogramOptions):
        percentile: float = 99.99

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 50 < self.percentile <= 100:
                raise ValueError(f"percentile must be in (50, 100], not {self.percentile}")

    def _range(self) -> tuple[float, float]:
        h, tail = self.histogram, (1 - self.options.percentile / 100) / 2
        return max(h.min, h.quantile(tail)), min(h.max, h.quantile(1 - tail))


@register_observer
class EntropyObserver(_HistogramObserver):
    """Symmetric threshold of least KL divergence, as TensorRT calibrates int8.

    Over the histogram of |x|, each candidate threshold keeps the first i cells (i from
    `quantized_bins` to all), folding the rest into cell i; the kept cells are merged into
    `quantized_bins` levels (128: int8's magnitudes) and spread back over their non-empty
    cells; the threshold whose distribution diverges least from the original wins (ties:
    the larger). As in NVIDIA's pytorch-quantization, the first cell counts as much as the
    second. The |x| histogram has between bins/4 and bins cells (see the module docstring),
    so `bins` must be at least 8 * quantized_bins: ONNX Runtime's default of 128 bins with
    128 quantized bins leaves one candidate. KL is not squared error: on smooth heavy
    tails (Student-t) it can clip harder than least MSE would.
    """

    name = "entropy"

    @dataclasses.dataclass
    class Options(_HistogramOptions):
        quantized_bins: int = 128

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.quantized_bins < 2 or self.bins < 8 * self.quantized_bins:
                raise ValueError(f"entropy needs quantized_bins >= 2 and bins >= 8 * quantized_bins "
                                 f"(got bins={self.bins}, quantized_bins={self.quantized_bins})")

    def _range(self) -> tuple[float, float]:
        h = self.histogram
        threshold = _least_divergence_cells(h.magnitudes(), self.options.quantized_bins) * h.width
        return max(h.min, -threshold), min(h.max, threshold)


def _least_divergence_cells(counts: np.ndarray, levels: int) -> int:
    """How many leading cells of `counts` to keep so that quantizing them to `levels`
    levels loses the least information (KL divergence, outliers clipped into the last)."""
    if len(counts) <= levels:
        return len(counts)
    counts = counts.copy()
    counts[0] = counts[1]  # a spike of exact zeros (ReLU) would otherwise pull the threshold down
    total = counts.sum()
    tails = total - np.cumsum(counts)  # tails[i - 1]: the counts beyond the first i cells
    best, best_cells = math.inf, len(counts)
    for cells in range(levels, len(counts) + 1):
        kept = counts[:cells]
        reference = kept.copy()
        reference[-1] += tails[cells - 1]
        level = np.arange(cells) * levels // cells
        nonzero = kept > 0
        level_sums = np.bincount(level, weights=kept, minlength=levels)
        level_sizes = np.bincount(level, weights=nonzero, minlength=levels)
        candidate = np.where(nonzero, level_sums[level] / np.maximum(level_sizes[level], 1), 0.0)
        seen = reference > 0
        if (candidate[seen] == 0).any():
            continue  # the clipped mass lands where the candidate has none: infinite divergence
        p, q = reference[seen] / total, candidate[seen] / candidate.sum()
        divergence = float(np.sum(p * np.log(p / q)))
        if divergence <= best:
            best, best_cells = divergence, cells
    return best_cells


@register_observer
class MseObserver(_HistogramObserver):
    """The range of least expected squared quantization error, from the histogram.

    For candidate bounds lo <= 0 <= hi on cell edges, values beyond a bound cost their
    squared distance to it (each cell's values taken at its centre) and values inside
    cost the uniform rounding noise step**2 / 12, step = (hi - lo) / (2**bits - 1), as
    for asymmetric quantization to `bits` bits; every pair (lo, hi) is scored.
    """

    name = "mse"

    @dataclasses.dataclass
    class Options(_HistogramOptions):
        bits: int = 8

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 2 <= self.bits <= 32:
                raise ValueError(f"bits must be in [2, 32], not {self.bits}")

    def _range(self) -> tuple[float, float]:
        h = self.histogram
        w, start = h.width, h.start
        lo0, hi0 = min(h.min, 0.0), max(h.max, 0.0)
        counts = h.counts.astype(np.float64)
        edges = h.edges()
        centres = edges[:-1] + w / 2
        below = [np.concatenate([[0.0], np.cumsum(counts * centres**p)]) for p in range(3)]  # sums over cells < j
        total = [s[-1] for s in below]
        # candidate edges: lo from the cell of min(x, 0) up to 0 (or max x if negative), hi likewise
        lows = np.arange(math.floor(lo0 / w) - start, math.floor(min(h.max, 0.0) / w) - start + 1)
        highs = np.arange(math.ceil(max(h.min, 0.0) / w) - start, math.floor(hi0 / w) - start + 2)
        lo = np.maximum(edges[lows], lo0)
        hi = np.minimum(edges[highs], hi0)
        left = below[2][lows] - 2 * lo * below[1][lows] + lo**2 * below[0][lows]
        right = ((total[2] - below[2][highs]) - 2 * hi * (total[1] - below[1][highs])
                 + hi**2 * (total[0] - below[0][highs]))
        inside = below[0][highs][None, :] - below[0][lows][:, None]
        step = (hi[None, :] - lo[:, None]) / (2**self.options.bits - 1)
        error = left[:, None] + right[None, :] + inside * step**2 / 12
        i, j = np.unravel_index(np.argmin(error), error.shape)
        return max(float(lo[i]), h.min), min(float(hi[j]), h.max)


# -- options ----------------------------------------------------------------------------

_ACCEPTS = {float: numbers.Real, int: numbers.Integral, bool: bool, type(None): type(None)}


def _build_options(cls: type[Observer], given: dict[str, Any]) -> Any:
    """The observer's Options from keyword arguments, each checked against its type."""
    fields = [f.name for f in dataclasses.fields(cls.Options)]
    hints = typing.get_type_hints(cls.Options)
    for key, value in given.items():
        if key not in fields:
            raise TypeError(f"observer {cls.name!r} has no option {key!r} (options: {', '.join(fields) or 'none'})")
        hint = hints[key]
        arms = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
        if not any(isinstance(value, _ACCEPTS[arm]) and (arm is bool or not isinstance(value, bool)) for arm in arms):
            shown = getattr(hint, "__name__", str(hint))
            raise TypeError(f"observer {cls.name!r}: option {key!r} takes {shown}, not {value!r}")
    return cls.Options(**given)


@dataclasses.dataclass(frozen=True)
class ObserverOptions:
    """method: the observer's registered name. The rest go to the observers that take them:
    percentile (percentile: the share of values kept, in percent), histograms' bins
    (percentile, entropy, mse), entropy's quantized_bins, mse's bits, ema-minmax's
    averaging_constant. Values are checked by constructing the observer once, when the options
    are made: a pipeline with a bad observer fails as it is parsed, before any pass runs."""

    method: str = "minmax"
    percentile: float = 99.99
    bins: int = 2048
    quantized_bins: int = 128
    bits: int = 8
    averaging_constant: float = 0.01

    def __post_init__(self) -> None:
        try:
            self.marks()
        except KeyError as err:  # an unknown observer
            raise ValueError(err.args[0] if err.args else str(err)) from None

    def marks(self) -> tuple[str, str]:
        """(observer name, `k=v,...` of the options it takes), after building one to check them."""
        cls = get_observer(self.method)
        taken = {f.name for f in dataclasses.fields(cls.Options)}
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in taken}
        cls(**options)
        return self.method, ",".join(f"{key}={value}" for key, value in options.items())

    def spec(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """The (observer name, options) pair calibrate reads from the marks these options write."""
        return marked_spec(*self.marks())


def marked_spec(name: str, text: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """(observer name, options) from insert-observers' marks: the `k=v,...` text read as pipeline
    options are, against the observer's typed Options. KeyError for an unknown observer,
    PipelineError for options it does not take."""
    raw = [(key.strip(), [word.strip()]) for key, _, word in (item.partition("=") for item in text.split(",") if item)]
    options = build_options(get_observer(name), raw, kind="observer")
    return name, tuple((key, getattr(options, key)) for key, _ in raw)
