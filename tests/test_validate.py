"""Validation metrics against numpy on the same arrays, streamed over batches; latency and its verdict."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.ir.evaluate import Latency, open_session, sqnr_db
from qcompiler.validate import LatencyPair, compare_models, latency_verdict, measure_latency, summary

CLASSES = 10
ROWS = 18
RNG = np.random.default_rng(7)
DATA = RNG.standard_normal((ROWS, CLASSES)).astype(np.float32)
NOISE = RNG.normal(0, 0.8, CLASSES).astype(np.float32)


def model(nodes: list, outputs: list, constants: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A graph over one input x: f32[N, 10]."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CLASSES])], outputs,
        [numpy_helper.from_array(array, name) for name, array in (constants or {}).items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return proto


def three_outputs(noise: np.ndarray | None) -> onnx.ModelProto:
    """y: the (noisy) input, a classifier output; z: y as [N, 2, 5]; idx: int64 argmax of y."""
    first = (helper.make_node("Add", ["x", "noise"], ["y"]) if noise is not None
             else helper.make_node("Identity", ["x"], ["y"]))
    nodes = [first, helper.make_node("Reshape", ["y", "shape"], ["z"]),
             helper.make_node("ArgMax", ["y"], ["idx"], axis=1, keepdims=0)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES]),
               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2, 5]),
               helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])]
    constants = {"shape": np.array([-1, 2, 5], np.int64)}
    if noise is not None:
        constants["noise"] = noise
    return model(nodes, outputs, constants)


def single(node: onnx.NodeProto, constants: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    return model([node], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])], constants)


def numpy_metrics(ref: np.ndarray, quant: np.ndarray) -> tuple[float, float, float]:
    """SQNR (dB), cosine and max |error| computed in one shot."""
    r, q = ref.astype(np.float64).ravel(), quant.astype(np.float64).ravel()
    sqnr = 10 * np.log10(np.sum(r**2) / np.sum((r - q) ** 2))
    cosine = np.dot(r, q) / (np.linalg.norm(r) * np.linalg.norm(q))
    return float(sqnr), float(cosine), float(np.max(np.abs(r - q)))


def as_kind(proto: onnx.ModelProto, kind: str, tmp_path, name: str):
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, path)
    return {"path": path, "str": str(path), "bytes": proto.SerializeToString(), "ir": ir.load_model(path)}[kind]


@pytest.mark.parametrize("kinds", [("ir", "ir"), ("path", "bytes"), ("bytes", "str")])
def test_metrics_streamed_over_batches_equal_numpy_on_all_rows(tmp_path, kinds):
    float_model = as_kind(three_outputs(None), kinds[0], tmp_path, "float")
    quant_model = as_kind(three_outputs(NOISE), kinds[1], tmp_path, "quant")
    specs = input_specs(as_kind(three_outputs(None), "ir", tmp_path, "specs"))
    data = open_calibration_data({"x": DATA}, specs, batch_size=5)  # batches of 5, 5, 5, 3 rows
    y, z, idx = compare_models(float_model, quant_model, data)

    noisy = DATA + NOISE
    for metrics, ref, quant in [(y, DATA, noisy), (z, DATA.reshape(-1, 2, 5), noisy.reshape(-1, 2, 5)),
                                (idx, DATA.argmax(1), noisy.argmax(1))]:
        sqnr, cosine, max_error = numpy_metrics(ref, quant)
        assert metrics.sqnr_db == pytest.approx(sqnr, rel=1e-9)
        assert metrics.cosine == pytest.approx(cosine, rel=1e-12)
        assert metrics.max_abs_error == pytest.approx(max_error, rel=1e-6)
        assert (metrics.samples, metrics.nonfinite) == (ROWS, 0)
    assert [m.name for m in (y, z, idx)] == ["y", "z", "idx"]
    agreement = np.mean(DATA.argmax(1) == noisy.argmax(1))
    assert 0 < agreement < 1  # the noise moves some argmaxes, so the check can fail
    assert y.top1_agreement == pytest.approx(agreement)
    assert z.top1_agreement is None and idx.top1_agreement is None  # rank 3; an int64 vector


def test_one_batch_or_many_give_the_same_metrics(tmp_path):
    float_model, quant_model = three_outputs(None).SerializeToString(), three_outputs(NOISE).SerializeToString()
    whole = compare_models(float_model, quant_model, [{"x": DATA}])
    split = compare_models(float_model, quant_model, [{"x": DATA[i:i + 4]} for i in range(0, ROWS, 4)])
    for one, many in zip(whole, split):
        assert many.sqnr_db == pytest.approx(one.sqnr_db, rel=1e-12)
        assert many.cosine == pytest.approx(one.cosine, rel=1e-12)
        assert many.max_abs_error == one.max_abs_error
        assert many.top1_agreement == one.top1_agreement


def test_nan_and_inf_in_the_quantized_output_are_counted_and_left_out_of_the_metrics():
    noise = NOISE.copy()
    noise[3], noise[7] = np.nan, np.inf
    float_model = single(helper.make_node("Identity", ["x"], ["y"])).SerializeToString()
    quant_model = single(helper.make_node("Add", ["x", "noise"], ["y"]), {"noise": noise}).SerializeToString()
    (metrics,) = compare_models(float_model, quant_model, [{"x": DATA[:8]}, {"x": DATA[8:]}])
    assert metrics.nonfinite == 2 * ROWS
    keep = np.isfinite(noise)
    sqnr, cosine, max_error = numpy_metrics(DATA[:, keep], (DATA + noise)[:, keep])
    assert metrics.sqnr_db == pytest.approx(sqnr, rel=1e-9)
    assert metrics.cosine == pytest.approx(cosine, rel=1e-12)
    assert metrics.max_abs_error == pytest.approx(max_error, rel=1e-6)
    assert summary([metrics]).startswith(f"y: {2 * ROWS} NaN/Inf value(s) in the quantized output; SQNR")


def test_identical_outputs_and_an_all_zero_reference():
    identity = single(helper.make_node("Identity", ["x"], ["y"])).SerializeToString()
    zeros = single(helper.make_node("Mul", ["x", "zero"], ["y"]), {"zero": np.zeros(CLASSES, np.float32)})
    feeds = [{"x": DATA}]
    (same,) = compare_models(identity, identity, feeds)
    assert (same.sqnr_db, same.max_abs_error, same.top1_agreement) == (math.inf, 0.0, 1.0)
    assert same.cosine == pytest.approx(1.0, abs=1e-12)
    (both_zero,) = compare_models(zeros.SerializeToString(), zeros.SerializeToString(), feeds)
    assert (both_zero.sqnr_db, both_zero.cosine) == (math.inf, 1.0)
    (zero_reference,) = compare_models(zeros.SerializeToString(), identity, feeds)
    assert (zero_reference.sqnr_db, zero_reference.cosine) == (-math.inf, 0.0)
    assert zero_reference.max_abs_error == pytest.approx(np.abs(DATA).max())


class Recorder:
    def __init__(self) -> None:
        self.advanced, self.closed = 0, False

    def advance(self, count: int = 1) -> None:
        self.advanced += count

    def close(self) -> None:
        self.closed = True


def test_progress_advances_per_batch_and_closes():
    identity = single(helper.make_node("Identity", ["x"], ["y"])).SerializeToString()
    recorder = Recorder()
    compare_models(identity, identity, [{"x": DATA[:5]}, {"x": DATA[5:]}], progress=recorder)
    assert (recorder.advanced, recorder.closed) == (2, True)


def test_failures_name_the_model_and_the_batch():
    identity = single(helper.make_node("Identity", ["x"], ["y"])).SerializeToString()
    with pytest.raises(ir.EvaluationError, match=r"^ONNX Runtime failed on the float model, batch 1: "):
        compare_models(identity, identity, [{"x": DATA}, {"x": DATA[:, :3]}])
    with pytest.raises(ir.EvaluationError, match=r"^ONNX Runtime cannot load the quantized model: "):
        compare_models(identity, b"not a model", [{"x": DATA}])
    with pytest.raises(ir.EvaluationError, match=r"^the float model has 1 output\(s\), the quantized model 3; "):
        compare_models(identity, three_outputs(None).SerializeToString(), [{"x": DATA}])
    with pytest.raises(ValueError, match="no data"):
        compare_models(identity, identity, [])


def test_open_session_takes_the_thread_count():
    session = open_session(single(helper.make_node("Identity", ["x"], ["y"])).SerializeToString(), threads=1)
    assert session.get_session_options().intra_op_num_threads == 1


def test_latency_gives_positive_medians_and_a_verdict_that_matches_them():
    float_model = single(helper.make_node("Identity", ["x"], ["y"])).SerializeToString()
    quant_model = three_outputs(NOISE).SerializeToString()
    pair = measure_latency(float_model, quant_model, {"x": DATA[:4]}, threads=1, warmup=1, repeat=5)
    for latency in (pair.float_model, pair.quant_model):
        assert 0 < latency.median_ms <= latency.p90_ms
        assert 1 <= latency.runs <= 5
    assert (pair.batch, pair.threads) == (4, 1)
    assert pair.ratio == pair.quant_model.median_ms / pair.float_model.median_ms
    verdict = latency_verdict(pair)
    side = "slower" if pair.ratio > 1 else "faster"
    factor = max(pair.ratio, 1 / pair.ratio)
    assert verdict.startswith((f"the quantized model is {factor:.1f}x {side} than float here (",
                               "the quantized model runs as fast as float here ("))
    assert verdict.endswith("at batch 4, 1 thread)")


def test_latency_stops_at_its_time_budget():
    identity = single(helper.make_node("Identity", ["x"], ["y"])).SerializeToString()
    pair = measure_latency(identity, identity, {"x": DATA}, threads=1, warmup=0, repeat=1000, budget_s=0.0)
    assert pair.float_model.runs == pair.quant_model.runs == 1


@pytest.mark.parametrize("quant_ms, float_ms, threads, expected", [
    (0.42, 0.25, 1, "int8 is 1.7x slower than float here (0.42 ms vs 0.25 ms at batch 1, 1 thread)"),
    (0.25, 0.575, 4, "int8 is 2.3x faster than float here (0.25 ms vs 0.575 ms at batch 1, 4 threads)"),
    (1.01, 1.0, 0, "int8 runs as fast as float here (1.01 ms vs 1 ms at batch 1, ORT's default threads)"),
    (250.0, 130.0, 2, "int8 is 1.9x slower than float here (250 ms vs 130 ms at batch 1, 2 threads)"),
])
def test_verdict_names_the_faster_side(quant_ms, float_ms, threads, expected):
    pair = LatencyPair(Latency(float_ms, float_ms, 3), Latency(quant_ms, quant_ms, 3), 1, threads)
    assert latency_verdict(pair, "int8") == expected
    assert latency_verdict(pair) == expected.replace("int8", "the quantized model", 1)


def test_summary_lines():
    float_model = three_outputs(None).SerializeToString()
    metrics = compare_models(float_model, three_outputs(NOISE).SerializeToString(), [{"x": DATA}])
    lines = summary(metrics).splitlines()
    y = metrics[0]
    assert lines[0] == (f"y: SQNR {y.sqnr_db:.1f} dB, cosine {y.cosine:.5f}, max |error| {y.max_abs_error:.4g}, "
                        f"top-1 agreement {100 * y.top1_agreement:.1f}% ({ROWS} samples)")
    assert lines[1].startswith("z: SQNR ") and "top-1" not in lines[1]
    assert len(lines) == 3


def test_outputs_pair_by_name_when_both_models_have_the_same_names():
    float_model = three_outputs(None).SerializeToString()
    reordered = three_outputs(NOISE)
    outputs = list(reordered.graph.output)
    del reordered.graph.output[:]
    reordered.graph.output.extend([outputs[2], outputs[0], outputs[1]])  # idx, y, z
    y, z, idx = compare_models(float_model, reordered.SerializeToString(), [{"x": DATA}])
    assert [m.name for m in (y, z, idx)] == ["y", "z", "idx"]
    assert y.sqnr_db == pytest.approx(numpy_metrics(DATA, DATA + NOISE)[0], rel=1e-9)
    assert idx.top1_agreement is None and y.top1_agreement is not None


def test_sqnr_definition():
    ref = np.array([[3.0, 4.0]], np.float32)
    assert sqnr_db(ref, ref + np.float32(0.5)) == pytest.approx(10 * math.log10(25 / 0.5))
    assert sqnr_db(ref, ref) == math.inf
