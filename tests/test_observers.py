"""Observers against numpy references on known distributions; merging, pickling, errors.

References: np.min/np.max and a numpy moving average for the min-max observers;
np.percentile for `percentile` (two-sided on x, within one bin width); a loop-style
TensorRT/pytorch-quantization KL search over np.histogram(|x|) for `entropy`; the
quantization error measured with quantize/dequantize for `mse` and, on heavy-tailed
data, for both against min-max.
"""

from __future__ import annotations

import pickle
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.ir import DType, QuantParams
from qcompiler.ir.quant import dequantize, quantize
from qcompiler.passes.analyses.observers import (
    MinMaxObserver,
    Observer,
    get_observer,
    register_observer,
    registered_observers,
)

HISTOGRAM_OBSERVERS = ["percentile", "entropy", "mse"]


@cache
def distribution(kind: str) -> np.ndarray:
    """float64 data (no value sits on a power-of-two bin edge, so |x| folds like np.histogram)."""
    rng = np.random.default_rng(sum(map(ord, kind)))
    if kind == "normal":
        return rng.normal(0.3, 1.7, 200_000)
    if kind == "uniform":
        return rng.uniform(-1.0, 3.0, 200_000)
    if kind == "relu":
        return np.maximum(rng.standard_normal(200_000), 0.0)
    # heavy-tailed: a Laplace bulk and four isolated outliers per million, as in transformer activations
    x = rng.laplace(0.0, 1.0, 1_000_000)
    x[rng.choice(x.size, 4, replace=False)] = [-57.0, -41.0, 38.0, 60.0]
    return x


def observe(name: str, data: np.ndarray, batches: int = 8, **options) -> Observer:
    observer = get_observer(name)(**options)
    for batch in np.array_split(data, batches):
        observer.update(batch)
    return observer


def quantization_mse(x: np.ndarray, lo: float, hi: float, dtype: DType, symmetric: bool) -> float:
    params = QuantParams.from_range(lo, hi, dtype, symmetric=symmetric)
    return float(np.mean((dequantize(quantize(x, params), params).astype(np.float64) - x) ** 2))


def test_registry_lists_the_built_in_observers():
    assert {"minmax", "ema-minmax", "percentile", "entropy", "mse"} <= set(registered_observers())
    with pytest.raises(KeyError, match="unknown observer 'percentil'; did you mean 'percentile'"):
        get_observer("percentil")
    with pytest.raises(KeyError, match="did you mean 'ema-minmax'"):
        get_observer("ema_minmax")


def test_registration_refuses_taken_and_malformed_names():
    class Again(MinMaxObserver):
        name = "minmax"

    class Badly(MinMaxObserver):
        name = "Min_Max"

    with pytest.raises(ValueError, match="'minmax' is taken by qcompiler.passes.analyses.observers.MinMaxObserver"):
        register_observer(Again)
    with pytest.raises(ValueError, match="kebab-case"):
        register_observer(Badly)
    assert get_observer("minmax") is MinMaxObserver


def test_options_are_typed_and_checked():
    assert get_observer("percentile")().options.percentile == 99.99
    assert get_observer("entropy")().options.bins == 2048
    assert get_observer("percentile")(percentile=99).options.percentile == 99  # ints are numbers
    with pytest.raises(TypeError, match="has no option 'percentil' .options: bins, percentile"):
        get_observer("percentile")(percentil=99.9)
    with pytest.raises(TypeError, match="option 'bins' takes int, not 20.5"):
        get_observer("mse")(bins=20.5)
    with pytest.raises(TypeError, match="option 'axis' takes int | None, not 'none'"):
        get_observer("minmax")(axis="none")
    with pytest.raises(ValueError, match="percentile must be in"):
        get_observer("percentile")(percentile=101.0)
    with pytest.raises(ValueError, match="bins >= 8 . quantized_bins"):
        get_observer("entropy")(bins=128, quantized_bins=128)  # ONNX Runtime's default: one candidate


@pytest.mark.parametrize("name", sorted(registered_observers()))
def test_bad_batches_and_empty_observers_are_refused(name):
    observer = get_observer(name)()
    with pytest.raises(RuntimeError, match="has seen no data"):
        observer.range()
    batch = np.ones((2, 3), np.float32)
    batch[0, 1], batch[1, 2] = np.nan, -np.inf
    with pytest.raises(ValueError, match=f"observer '{name}': the batch holds 1 NaN and 1 infinite values"):
        observer.update(batch)
    with pytest.raises(TypeError, match="numeric arrays"):
        observer.update(np.array(["1.0"]))
    observer.update(np.zeros((0, 4), np.float32))  # empty: nothing seen
    assert observer.observed == 0


@pytest.mark.parametrize("kind", ["normal", "uniform", "heavy"])
def test_minmax_is_exact(kind):
    x = distribution(kind)
    observer = observe("minmax", x)
    assert observer.range() == (x.min(), x.max())
    assert observer.observed == x.size


def test_per_channel_minmax_gives_per_axis_params():
    x = np.random.default_rng(0).standard_normal((6, 4, 5)) * np.array([0.1, 1, 10, 100])[None, :, None]
    observer = observe("minmax", x, batches=3, axis=1)
    lo, hi = observer.range()
    np.testing.assert_array_equal(lo, x.min(axis=(0, 2)))
    np.testing.assert_array_equal(hi, x.max(axis=(0, 2)))
    params = observer.quant_params(DType.INT8, symmetric=True)
    assert params == QuantParams.from_range(lo, hi, DType.INT8, symmetric=True, axis=1)
    with pytest.raises(ValueError, match="saw 4 channels, now 3"):
        observer.update(np.zeros((2, 3, 5)))


def test_ema_minmax_is_a_moving_average_of_batch_extremes():
    x = distribution("normal")
    batches = np.array_split(x, 20)
    observer = observe("ema-minmax", x, batches=20, averaging_constant=0.1)
    lo, hi = batches[0].min(), batches[0].max()
    for batch in batches[1:]:
        lo, hi = lo + 0.1 * (batch.min() - lo), hi + 0.1 * (batch.max() - hi)
    np.testing.assert_allclose(observer.range(), (lo, hi), rtol=1e-12)
    per_channel = observe("ema-minmax", x.reshape(-1, 4), batches=20, axis=-1)
    assert per_channel.range()[0].shape == (4,)


@pytest.mark.parametrize("kind", ["normal", "uniform", "heavy"])
def test_percentile_is_within_one_bin_of_numpy(kind):
    x = distribution(kind)
    observer = observe("percentile", x, percentile=99.9)
    expected = np.percentile(x, [0.05, 99.95])
    assert np.all(np.abs(np.array(observer.range()) - expected) <= observer.bin_width)


def reference_entropy_threshold(x: np.ndarray, width: float, levels: int) -> float:
    """pytorch-quantization's `_compute_amax_entropy`, over np.histogram(|x|) with cells of `width`."""
    magnitude = np.abs(x)
    cells = int(magnitude.max() // width) + 1
    hist, edges = np.histogram(magnitude, bins=np.arange(cells + 1) * width)
    hist = hist.astype(np.float64)
    hist[0] = hist[1]
    if cells <= levels:
        return magnitude.max()
    divergences = []
    for i in range(levels, cells + 1):
        digitized = np.digitize(np.arange(i), np.linspace(0, i, num=levels + 1)) - 1
        digitized[hist[:i] == 0] = -1
        used = digitized != -1
        density, members = np.zeros(levels), np.zeros(levels)
        np.add.at(density, digitized[used], hist[:i][used])
        np.add.at(members, digitized[used], 1)
        candidate = np.where(used, density[digitized] / np.maximum(members[digitized], 1), 0.0)
        reference = hist[:i].copy()
        reference[-1] += hist[i:].sum()
        p, q = reference / reference.sum(), candidate / candidate.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / np.where(q > 0, q, 0.0)), 0.0)
        divergences.append(terms.sum())
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return edges[levels + last_argmin]


@pytest.mark.parametrize("kind", ["normal", "relu", "heavy"])
def test_entropy_threshold_equals_the_tensorrt_search(kind):
    x = distribution(kind)[:100_000] if kind == "heavy" else distribution(kind)
    x = np.concatenate([x, [60.0]]) if kind == "heavy" else x  # keep the outliers' reach
    observer = observe("entropy", x, bins=1024, quantized_bins=64)
    threshold = reference_entropy_threshold(x, observer.bin_width, 64)
    assert observer.range() == (max(x.min(), -threshold), min(x.max(), threshold))


def test_mse_range_is_a_least_error_range():
    """No bound moved alone along a fine grid gives a clearly smaller measured error."""
    x = distribution("heavy")[:200_000]
    x = np.concatenate([x, [-60.0, 60.0]])
    lo, hi = observe("mse", x).range()
    ours = quantization_mse(x, lo, hi, DType.UINT8, symmetric=False)
    along_lo = min(quantization_mse(x, a, hi, DType.UINT8, False) for a in np.linspace(1.6 * lo, 0.4 * lo, 49))
    along_hi = min(quantization_mse(x, lo, b, DType.UINT8, False) for b in np.linspace(0.4 * hi, 1.6 * hi, 49))
    assert ours <= 1.02 * min(along_lo, along_hi)


@pytest.mark.parametrize("symmetric", [False, True], ids=["u8-asym", "i8-sym"])
def test_entropy_and_mse_beat_minmax_on_heavy_tails(symmetric):
    x = distribution("heavy")
    dtype = DType.INT8 if symmetric else DType.UINT8
    error = {name: quantization_mse(x, *observe(name, x).range(), dtype, symmetric)
             for name in ("minmax", "entropy", "mse")}
    assert error["entropy"] < error["minmax"] / 1.5
    assert error["mse"] < error["minmax"] / 1.5
    assert error["mse"] <= error["entropy"] * 1.05


@pytest.mark.parametrize("kind", ["normal", "uniform", "relu"])
def test_entropy_and_mse_stay_close_to_minmax_without_outliers(kind):
    x = distribution(kind)
    error = {name: quantization_mse(x, *observe(name, x).range(), DType.UINT8, False)
             for name in ("minmax", "entropy", "mse")}
    assert error["entropy"] <= 1.05 * error["minmax"]
    assert error["mse"] <= 1.05 * error["minmax"]


def test_histogram_widens_by_merging_whole_cells():
    observer = get_observer("percentile")(bins=16)
    observer.update(np.array([-0.3, 1.1]))
    assert observer.bin_width == 0.125  # 16 cells of 0.125 cover [-0.3, 1.1]; 0.0625 would not
    observer.update(np.array([7.4]))  # 0.25 would need 31 cells: pairs of cells merge twice
    assert observer.bin_width == 0.5
    np.testing.assert_array_equal(observer.histogram.edges()[[0, -1]], [-0.5, 7.5])
    np.testing.assert_array_equal(np.flatnonzero(observer.histogram.counts), [0, 3, 15])


def test_merge_refuses_other_kinds_and_options():
    with pytest.raises(ValueError, match="cannot merge observer 'minmax'"):
        get_observer("percentile")().merge(get_observer("minmax")())
    with pytest.raises(ValueError, match="cannot merge observer 'percentile'"):
        get_observer("percentile")(percentile=99.9).merge(get_observer("percentile")())


def test_ema_merge_weights_shards_by_batch_count():
    rng = np.random.default_rng(3)
    a = observe("ema-minmax", rng.standard_normal(300), batches=3)
    b = observe("ema-minmax", 5 * rng.standard_normal(100), batches=1)
    expected = (0.75 * a.lo + 0.25 * b.lo, 0.75 * a.hi + 0.25 * b.hi)
    a.merge(b)
    assert a.range() == expected and a.batches == 4


shard_plans = st.tuples(
    st.integers(0, 2**32 - 1),  # data seed
    st.lists(st.integers(1, 400), min_size=1, max_size=8),  # batch sizes
    st.lists(st.integers(0, 7), max_size=4),  # cut points between shards (batch indices)
)


@settings(max_examples=40, deadline=None)
@given(plan=shard_plans)
def test_merged_shards_equal_one_pass(plan):
    """Sharded + merged observers equal one observer over all batches: exactly (tolerance 0)."""
    seed, sizes, cuts = plan
    rng = np.random.default_rng(seed)
    # batches of very different scales and offsets, so the histograms re-bin often
    batches = [rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3) + rng.uniform(-5, 5) * rng.integers(0, 2)
               for n in sizes]
    bounds = [0, *sorted({c for c in cuts if c < len(batches)}), len(batches)]
    shards = [batches[a:b] for a, b in zip(bounds, bounds[1:])]
    options = {"minmax": {}, "percentile": {"bins": 64}, "entropy": {"bins": 256, "quantized_bins": 16},
               "mse": {"bins": 64}}
    for name, opts in options.items():
        whole = get_observer(name)(**opts)
        for batch in batches:
            whole.update(batch)
        merged = get_observer(name)(**opts)
        for shard in reversed(shards):
            part = get_observer(name)(**opts)
            for batch in shard:
                part.update(batch)
            merged.merge(part)
        assert merged.observed == whole.observed
        assert merged.range() == whole.range(), name
        if name != "minmax":
            np.testing.assert_array_equal(merged.histogram.counts, whole.histogram.counts)


def test_merged_default_histograms_equal_one_pass():
    x = distribution("heavy")
    whole = {name: observe(name, x, batches=5) for name in HISTOGRAM_OBSERVERS}
    for name in HISTOGRAM_OBSERVERS:
        merged = get_observer(name)()
        for shard in np.array_split(x[::-1], 3):
            merged.merge(observe(name, shard, batches=2))
        assert merged.range() == whole[name].range()


@pytest.mark.parametrize("name", sorted(registered_observers()))
def test_pickle_round_trip_keeps_state(name):
    rng = np.random.default_rng(7)
    observer = observe(name, rng.standard_normal(5000), batches=4)
    copy = pickle.loads(pickle.dumps(observer))
    assert copy.options == observer.options and copy.observed == observer.observed
    assert copy.range() == observer.range()
    more = 3 * rng.standard_normal(1000)
    observer.update(more)
    copy.update(more)
    assert copy.range() == observer.range()
    assert copy.quant_params(DType.UINT8, symmetric=False) == observer.quant_params(DType.UINT8, symmetric=False)
