"""The calibrate pass: ranges equal numpy on ONNX Runtime's own activations; groups, jobs, cache."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

from qcompiler import ir
from qcompiler.ir.evaluate import open_session
from qcompiler.passes import PassContext, PassError, PassManager


class Batches:
    """Feeds held in memory, with the sharding and fingerprint the pass can use."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds

    def __iter__(self):
        return iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def shard(self, index: int, count: int) -> Batches:
        return Batches(self.feeds[index::count])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for feeds in self.feeds:
            for name, array in sorted(feeds.items()):
                digest.update(name.encode() + array.tobytes())
        return digest.hexdigest()


def batches(exported, count: int, seed: int = 0) -> Batches:
    rng = np.random.default_rng(seed)
    (name, example), = exported.feeds.items()
    return Batches([{name: rng.standard_normal(example.shape).astype(np.float32)} for _ in range(count)])


def mark_all(model: ir.Model, observer: str = "minmax") -> list[ir.Value]:
    """Mark every node output of the main graph, as insert-observers would mark activations."""
    values = [v for node in model.graph.nodes for v in node.outputs if v.dtype == ir.DType.FLOAT]
    for value in values:
        value.meta["observer"] = observer
    return values


def numpy_ranges(path, data: Batches, names: list[str]) -> dict[str, tuple[float, float]]:
    """The reference: ORT runs the float model with the values added as outputs by onnx.helper."""
    proto = onnx.load(path)
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = open_session(proto)
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for feeds in data:
        for name, array in zip(names, session.run(names, feeds)):
            lo[name] = min(lo[name], float(array.min()))
            hi[name] = max(hi[name], float(array.max()))
    return {n: (lo[n], hi[n]) for n in names}


def calibrate(model: ir.Model, data, pipeline: str = "calibrate") -> PassContext:
    ctx = PassContext(calibration_data=data)
    PassManager(pipeline).run(model, ctx)
    return ctx


@pytest.mark.parametrize("name", ["conv_bn_pool", "attention"])
def test_ranges_equal_numpy_over_onnx_runtime(name, torch_exports):
    exported = torch_exports[name]
    model = ir.load_model(exported.path)
    values = mark_all(model)
    data = batches(exported, 6)
    ctx = calibrate(model, data)
    expected = numpy_ranges(exported.path, data, [v.name for v in values])
    assert {v.name: v.observed_range for v in values} == {
        n: (float(np.float32(lo)), float(np.float32(hi))) for n, (lo, hi) in expected.items()
    }
    assert ctx.report["calibrate"]["samples"] == 6 and ctx.report["calibrate"]["groups"] == 1
    assert "range=[" in ir.print_model(model)


def ranges_after(exported, data, pipeline: str = "calibrate") -> tuple[list, PassContext]:
    """Load, mark every activation, calibrate: the observed ranges in graph order, and the context."""
    model = ir.load_model(exported.path)
    values = mark_all(model)
    ctx = calibrate(model, data, pipeline)
    return [v.observed_range for v in values], ctx


def test_small_memory_budget_splits_values_into_groups_with_the_same_result(torch_exports):
    exported = torch_exports["conv_bn_pool"]
    data = batches(exported, 4)
    whole, _ = ranges_after(exported, data)
    split, ctx = ranges_after(exported, data, "calibrate{memory_budget_mb=0}")
    assert ctx.report["calibrate"]["groups"] == len(split) > 1
    assert whole == split


def test_two_worker_processes_give_the_same_minmax_ranges(torch_exports):
    exported = torch_exports["conv_bn_pool"]
    data = batches(exported, 6)
    single, _ = ranges_after(exported, data)
    sharded, ctx = ranges_after(exported, data, "calibrate{jobs=2}")
    assert ctx.report["calibrate"]["samples"] == 6
    assert single == sharded


def test_cache_is_reused_only_for_the_same_model_and_data(tmp_path, torch_exports):
    exported = torch_exports["conv_bn_pool"]
    cache = tmp_path / "calib.cache"
    pipeline = f'calibrate{{cache="{cache}"}}'
    first = ir.load_model(exported.path)
    mark_all(first)
    assert calibrate(first, batches(exported, 3), pipeline).report["calibrate"]["cache"] == "written"
    again = ir.load_model(exported.path)
    mark_all(again)
    assert calibrate(again, batches(exported, 3), pipeline).report["calibrate"]["cache"] == "hit"
    assert [v.observed_range for v in mark_all(first)] == [v.observed_range for v in mark_all(again)]
    other_data = ir.load_model(exported.path)
    mark_all(other_data)
    assert calibrate(other_data, batches(exported, 3, seed=1), pipeline).report["calibrate"]["cache"] == "written"


def test_errors_name_what_is_wrong(torch_exports):
    exported = torch_exports["conv_bn_pool"]
    model = ir.load_model(exported.path)
    mark_all(model)
    with pytest.raises(PassError, match=r"pass 'calibrate' \(1\) cannot run: calibrate needs calibration data"):
        PassManager("calibrate").run(model, PassContext())
    with pytest.raises(PassError, match="holds no samples"):
        calibrate(model, Batches([]))
    (name, example), = exported.feeds.items()
    poisoned = np.full(example.shape, np.nan, np.float32)
    with pytest.raises(PassError, match=r"calibration batch 1: value %\S+: .*(NaN|nan)"):
        calibrate(model, Batches([exported.feeds, {name: poisoned}]))
    with pytest.raises(PassError, match="cannot be sharded"):
        calibrate(model, iter([exported.feeds]), "calibrate{jobs=2}")


def test_nothing_marked_means_nothing_to_do(torch_exports):
    model = ir.load_model(torch_exports["conv_bn_pool"].path)
    assert not PassManager("calibrate").run(model, PassContext()).changed
