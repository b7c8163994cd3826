"""calibrate: stream calibration data through the float model and record observed ranges.

1. The values insert-observers marked (`value.meta["observer"]`, in the main graph) are
   tapped: an ONNX Runtime session returns them beside the model's outputs.
2. Batches stream through one at a time; each observer sees its value's array and
   keeps a fixed-size state, so memory does not grow with the number of samples.
3. When tapping every value at once would hold more than `memory_budget_mb` of
   activations per batch, the values are split into groups and the data is read once
   per group.
4. With `jobs > 1` the data is sharded over the context's executor (local processes by
   default, or Ray tasks: infra/executor.py), and the shards' observers merge;
   min-max results equal the single-process ones, histogram observers match within
   their stated tolerance.
5. Each observed value gets `observed_range` (printed as `range=[lo, hi]`) and keeps its
   observer in `value.meta["observer_state"]` for the passes that choose scales. A value
   that follows another's parameters (`rules.quantized_values`) gets that range too: its
   values lie within it, and a variant in which it leads (assign-precision keeping its
   leader's producer float) needs a range of its own.
6. With `cache=FILE`, the observers are saved keyed by a hash of the model, the data
   and the observer settings, and a later compile with the same key skips the run.

    %c1: f32[N,8,16,16] = Conv(...)            %c1: f32[N,8,16,16] range=[-3.1, 4.2] = Conv(...)
"""

from __future__ import annotations

import hashlib
import math
import operator
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qcompiler import ir
from qcompiler.ir.evaluate import main_values, tap_groups
from qcompiler.ir.fileio import atomic_output

from ..infra.base import Pass, PassError, PipelineError, register_pass
from ..analyses.observers import Observations, Observer, marked_spec, observe
from ..infra.executor import Executor
from ..infra.progress import SWITCH, Progress
from ..analyses.rules import quantized_values

_CACHE_VERSION = 1


@register_pass
class Calibrate(Pass):
    """Run calibration data through the float model and record each observed value's range."""

    name = "calibrate"
    reads = frozenset({"observer", "observer_options"})
    writes = frozenset({"observer_state"})
    gives = frozenset({"calibrated"})

    @dataclass
    class Options:
        """memory_budget_mb: activations held per batch before values are split into groups;
        jobs: shards run by the context's executor (the data must support sharding);
        cache: a file to reuse results from; progress: a progress line (auto = on a
        terminal only)."""

        memory_budget_mb: int = 1024
        jobs: int = 1
        cache: str = ""
        progress: Literal["auto", "on", "off"] = "auto"

    def requires(self, model: ir.Model, ctx) -> None:
        if ctx.calibration_data is None and _observed_values(model):
            raise PassError("calibrate needs calibration data (--calib DATA on the command line, or PassContext(calibration_data=...))")
        if self.options.jobs < 1:
            raise PassError("calibrate{jobs=...} must be at least 1")

    def run(self, model: ir.Model, ctx) -> bool:
        values = _observed_values(model)
        if not values:
            return False
        specs = [_observer_spec(v) for v in values]
        start = time.perf_counter()
        key = _cache_key(model, ctx.calibration_data, specs) if self.options.cache else None
        observers = _load_cache(Path(self.options.cache), key) if key else None
        if observers is None:
            observers = self._observe(model, values, specs, ctx.calibration_data, ctx.observations, ctx.executor)
            if key:
                _save_cache(Path(self.options.cache), key, observers)
        else:
            self.stats["cache_hits"] += 1
        for value, observer in zip(values, observers):
            value.observed_range = _overall_range(value, observer)
            value.meta["observer_state"] = observer
        for value, leader in quantized_values(model).items():
            if value.observed_range is None and leader.observed_range is not None:
                value.observed_range = leader.observed_range
        self.stats["values"] += len(values)
        ctx.report["calibrate"] = {
            "values": len(values),
            "samples": self.stats["samples"],
            "groups": self.stats["groups"],
            "seconds": round(time.perf_counter() - start, 3),
            "cache": "hit" if self.stats["cache_hits"] else ("written" if key else "off"),
        }
        return True

    def _observe(self, model: ir.Model, values: list[ir.Value], specs: list[tuple], data,
                 observations: Observations | None, executor: Executor) -> list[Observer]:
        groups = tap_groups(model, values, data, self.options.memory_budget_mb << 20)
        self.stats["groups"] += len(groups)
        observers: list[Observer | None] = [None] * len(values)
        for group in groups:
            tapped = [values[i] for i in group]
            group_specs = [specs[i] for i in group]
            if self.options.jobs == 1:
                measured = observations.passes if observations is not None else None
                found, samples = observe(model, tapped, group_specs, data, self._progress(data), store=observations)
                if measured is not None and observations.passes == measured:
                    self.stats["reused"] += 1
            else:
                found, samples = self._observe_parallel(model, tapped, group_specs, data, executor)
            for i, observer in zip(group, found):
                observers[i] = observer
            self.stats["samples"] = samples
        return observers

    def _observe_parallel(self, model, tapped, specs, data, executor: Executor) -> tuple[list[Observer], int]:
        if not hasattr(data, "shard"):
            raise PassError(f"calibrate{{jobs={self.options.jobs}}}: this calibration data cannot be sharded "
                            "(use a file or folder source, or jobs=1)")
        jobs = self.options.jobs
        positions = {v: i for i, v in enumerate(main_values(model))}  # the model travels as text: values by place
        work = [(model, [positions[v] for v in tapped], specs, data.shard(i, jobs)) for i in range(jobs)]
        results = executor.map(_observe_shard_in_worker, work)
        seen = [(observers, samples) for observers, samples in results if samples]  # shards may be empty
        if not seen:
            raise PassError("the calibration data holds no samples")
        merged, samples = seen[0]
        for shard_observers, shard_samples in seen[1:]:
            for observer, other in zip(merged, shard_observers):
                observer.merge(other)
            samples += shard_samples
        return merged, samples

    def _progress(self, data) -> Progress:
        total = operator.length_hint(data) or None  # generators have no length
        enabled = SWITCH[self.options.progress]
        return Progress("calibrate", total, "batches", enabled=enabled)


def _observed_values(model: ir.Model) -> list[ir.Value]:
    return [v for v in main_values(model) if "observer" in v.meta]


def _observer_spec(value: ir.Value) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """(observer name, options) from the marks insert-observers left (or a hand edit)."""
    text = str(value.meta.get("observer_options", ""))
    try:
        return marked_spec(value.meta["observer"], text)
    except KeyError as err:  # an unknown observer
        raise PassError(f"value {value.name!r}: {err.args[0]}") from None
    except PipelineError as err:
        raise PassError(f"value {value.name!r}: observer_options={text!r}: {err.message}") from None


def _observe_shard_in_worker(work) -> tuple[list[Observer], int]:
    """One worker's shard; it may be empty when there are more workers than batches."""
    model, positions, specs, data = work
    values = main_values(model)
    return observe(model, [values[i] for i in positions], specs, data, Progress("", None, enabled=False),
                   threads=1, empty_ok=True)


def _overall_range(value: ir.Value, observer: Observer) -> tuple[float, float]:
    """The value's range; a per-channel observer's arrays are spanned by their extremes."""
    try:
        lo, hi = observer.range()
    except RuntimeError as err:  # it saw only empty tensors
        raise PassError(f"value %{value.name}: {err}") from None
    lo, hi = float(np.min(lo)), float(np.max(hi))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise PassError(f"value %{value.name}: calibration produced a non-finite range ({lo}, {hi})")
    return lo, hi


def _cache_key(model: ir.Model, data, specs: list[tuple]) -> str:
    if not hasattr(data, "fingerprint"):
        raise PassError("calibrate{cache=...}: this calibration data has no fingerprint to key a cache with")
    digest = hashlib.sha256()
    digest.update(ir.print_model(model, weights="summary").encode())
    digest.update(data.fingerprint().encode())
    digest.update(repr(specs).encode())
    return digest.hexdigest()


def _load_cache(path: Path, key: str) -> list[Observer] | None:
    """The cached observers when the file exists and its key matches; None otherwise.

    The cache is a pickle the compiler wrote itself; do not point it at files from others.
    """
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            entry = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    if entry.get("version") != _CACHE_VERSION or entry.get("key") != key:
        return None
    return entry["observers"]


def _save_cache(path: Path, key: str, observers: list[Observer]) -> None:
    with atomic_output(path) as staged, staged.open("wb") as f:
        pickle.dump({"version": _CACHE_VERSION, "key": key, "observers": observers}, f)
