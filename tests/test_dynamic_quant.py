"""dynamic-quant against ONNX Runtime and numpy: the fused dynamic kernels ORT picks, outputs equal to the
scheme written out in numpy, accuracy against the float model, overrides, and a static pipeline with one node
left to dynamic quantization."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import VNNI_CPU, run_onnx
from onnx import TensorProto, helper, numpy_helper
from torch_models import export_model

import qcompiler.passes.transforms.dynamic_quant  # noqa: F401  (registers the pass)
from qcompiler import ir
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.ir.evaluate import open_session, sqnr_db
from qcompiler.kernels import kernel_report
from qcompiler.passes import PassContext, PassManager, Target
from qcompiler.passes.analyses.cost import emitted_cost, node_macs

DYNAMIC = "canonicalize,fuse,dynamic-quant{{{}}},cleanup"
FUSED = ("MatMulIntegerToFloat", "DynamicQuantizeMatMul")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    directory = tmp_path_factory.mktemp("torch")
    return {name: export_model(name, directory) for name in ("mlp_matmul", "attention")}


def compiled(source, options: str = "", ctx: PassContext | None = None) -> ir.Model:
    model = ir.load_model(source)
    PassManager(DYNAMIC.format(options)).run(model, ctx or PassContext(target=VNNI_CPU))  # full-range codes
    return model


def optimized_graph(proto: onnx.ModelProto) -> onnx.GraphProto:
    """The graph ONNX Runtime runs (its default level, ORT_ENABLE_ALL)."""
    with tempfile.TemporaryDirectory() as scratch:
        open_session(proto, save_optimized=Path(scratch) / "optimized.onnx")
        return onnx.load(Path(scratch) / "optimized.onnx").graph


def weight_matmuls(model: ir.Model) -> int:
    return sum(1 for n in model.graph.nodes if n.op_type in ("MatMul", "Gemm") and n.inputs[1].is_const)



# -- numpy reference of the scheme ------------------------------------------------------


def dynamic_matmul(x: np.ndarray, w: np.ndarray, per_channel: bool, reduce_range: bool) -> np.ndarray:
    """x @ w as ONNX Runtime's dynamic kernels compute it: x to uint8 over [min(x, 0), max(x, 0)] with
    DynamicQuantizeLinear's formulas, w ([K, N]) to symmetric int8 (codes within [-64, 64] with reduce_range),
    the product of codes in int64, rescaled by x_scale * w_scale in float32."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    x_scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
    x_zero = np.clip(np.rint(-np.float32(lo) / x_scale), 0, 255)
    x_codes = np.clip(np.rint(x / x_scale) + x_zero, 0, 255).astype(np.int64)
    absmax = np.abs(w).max(axis=0 if per_channel else None).astype(np.float64) * (2 if reduce_range else 1)
    w_scale = (absmax / 127).astype(np.float32)
    w_codes = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int64)
    return ((x_codes - x_zero.astype(np.int64)) @ w_codes).astype(np.float32) * (x_scale * w_scale)


def two_layers(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [3, 48] -> MatMul(w1 [48, 40]) -> Relu -> Gemm(w2 stored [24, 40], c [24]) {transB=1, beta=0.5}."""
    rng = np.random.default_rng(seed)
    arrays = {"w1": rng.standard_normal((48, 40)).astype(np.float32) / 4,
              "w2": rng.standard_normal((24, 40)).astype(np.float32) * rng.uniform(0.1, 2, (24, 1)).astype(np.float32),
              "c": rng.standard_normal(24).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "c"], ["y"], name="fc2", transB=1, beta=0.5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 24])],
                              [numpy_helper.from_array(a, k) for k, a in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), arrays


@pytest.mark.parametrize("per_channel", [False, True])
def test_outputs_match_numpy_reference(per_channel):
    # reduce_range: on x86 without VNNI full-range codes saturate in ORT's u8 x s8 kernel, which numpy does not
    proto, arrays = two_layers()
    model = compiled(proto, f"per_channel={str(per_channel).lower()},reduce_range=true")
    x = np.random.default_rng(1).standard_normal((3, 48)).astype(np.float32) * 2
    hidden = np.maximum(dynamic_matmul(x, arrays["w1"], per_channel, True), 0)
    expected = dynamic_matmul(hidden, arrays["w2"].T, per_channel, True) + np.float32(0.5) * arrays["c"]
    (actual,) = run_onnx(ir.to_onnx(model), {"x": x})
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    float_out = run_onnx(proto, {"x": x})[0]
    assert not np.allclose(actual, float_out, atol=1e-5 * np.abs(expected).max())  # the reference is not float


def test_weights_stored_as_int8_codes():
    proto, arrays = two_layers()
    model = compiled(proto, "per_channel=true")
    codes = {n.name: n.inputs[1] for n in model.graph.nodes if n.op_type == "MatMulInteger"}
    assert set(codes) == {"fc1", "fc2"}
    assert codes["fc2"].const.shape == (40, 24) and codes["fc2"].const.dtype == np.int8  # transB: stored [K, N]
    params = codes["fc2"].quant
    assert params.axis == 1 and np.all(params.zero_point == 0)
    np.testing.assert_allclose(params.scale, np.abs(arrays["w2"]).max(axis=1) / 127, rtol=1e-6)
    assert np.abs(codes["fc1"].const).max() == 127
    assert not any(v.name in arrays for v in model.graph.constants if v.name != "c")  # float weights gone


@pytest.mark.parametrize("per_channel", ["false", "true"])
@pytest.mark.parametrize("name", ["mlp_matmul", "attention"])
def test_ort_runs_every_weight_matmul_in_a_dynamic_kernel(exports, name, per_channel):
    source = ir.load_model(str(exports[name].path))
    ctx = PassContext()  # no calibration data
    model = compiled(str(exports[name].path), f"per_channel={per_channel}", ctx)
    ops = [node.op_type for node in optimized_graph(ir.to_onnx(model)).node]
    assert sum(ops.count(op) for op in FUSED) == weight_matmuls(source) == ctx.report["dynamic-quant"]["nodes"]
    assert "MatMulInteger" not in ops and "Cast" not in ops
    quantized_inputs = {n.inputs[0] for n in model.graph.nodes if n.op_type == "MatMulInteger"}
    assert sum(n.op_type == "DynamicQuantizeLinear" for n in model.graph.nodes) == len(quantized_inputs)


def test_mlp_accuracy_against_float(exports):
    exported = exports["mlp_matmul"]
    model = compiled(str(exported.path), "reduce_range=true")
    x = np.random.default_rng(2).standard_normal((2, 5, 16)).astype(np.float32)
    reference = run_onnx(str(exported.path), {"x": x})[0]
    assert sqnr_db(reference, run_onnx(ir.to_onnx(model), {"x": x})[0]) > 30


@pytest.mark.parametrize("override", [{"precision": "fp32"}, {"precision": "fp16"}, {"quantize": False}])
def test_nodes_kept_float_are_skipped(override):
    proto, _ = two_layers()
    model = ir.load_model(proto)
    next(n for n in model.graph.nodes if n.name == "fc2").meta.update(override)
    ctx = PassContext()
    PassManager(DYNAMIC.format("")).run(model, ctx)
    assert {n.name for n in model.graph.nodes if n.op_type == "MatMulInteger"} == {"fc1"}
    assert [n.op_type for n in model.graph.nodes if n.name == "fc2"] == ["Gemm"]
    report = ctx.report["dynamic-quant"]
    assert (report["nodes"], report["weights"], report["skipped"]) == (1, 1, 1)


STATIC_WITH_DYNAMIC = ("canonicalize,fuse,dynamic-quant{marked_only=true,reduce_range=true},insert-observers,calibrate,"
                       "place-qdq,fold-weights{reduce_range=true},cleanup")


def static_compile(path: Path, pipeline: str, marked: str) -> ir.Model:
    model = ir.load_model(str(path))
    next(n for n in model.graph.nodes if n.name == marked).meta["precision"] = "dynamic"
    rng = np.random.default_rng(3)
    rows = [{"x": rng.standard_normal((2, 5, 16)).astype(np.float32)} for _ in range(8)]
    ctx = PassContext(calibration_data=open_calibration_data(rows, input_specs(model)))
    PassManager(pipeline).run(model, ctx)
    return model


def test_one_node_dynamic_in_a_static_pipeline(exports):
    exported = exports["mlp_matmul"]
    model = static_compile(exported.path, STATIC_WITH_DYNAMIC, "/fc1/MatMul")
    (integer,) = [n for n in model.graph.nodes if n.op_type == "MatMulInteger"]
    assert integer.name == "/fc1/MatMul" and integer.inputs[1].const.dtype == np.int8
    assert integer.inputs[0].producer.inputs[0].producer.op_type == "MatMul"  # DynamicQuantizeLinear reads float
    proto = ir.to_onnx(model)
    report = kernel_report(model, exported=proto)
    assert report.float_nodes == [] and report.integer_share == 1.0  # the static MatMuls run integer kernels
    assert report.op_counts.get("com.microsoft::DynamicQuantizeMatMul") == 1
    static = ("MatMulIntegerToFloat", "QGemm", "QLinearMatMul")
    assert sum(n for op, n in report.op_counts.items() if op.split("::")[-1] in static) == 2
    (fused,) = [n for n in optimized_graph(proto).node if n.op_type == "DynamicQuantizeMatMul"]
    assert fused.input[1] == integer.inputs[1].name  # the kernel reads the weight dynamic-quant stored
    reference = run_onnx(str(exported.path), exported.feeds)[0]
    assert sqnr_db(reference, run_onnx(proto, exported.feeds)[0]) > 20


def test_dynamic_mark_without_the_pass_stays_float(exports):
    pipeline = STATIC_WITH_DYNAMIC.replace("dynamic-quant{marked_only=true,reduce_range=true},", "")
    model = static_compile(exports["mlp_matmul"].path, pipeline, "/fc1/MatMul")
    assert kernel_report(model).float_nodes == ["/fc1/MatMul"]



def test_emitted_cost_counts_dynamic_matmuls_as_8_bit(exports):
    model = compiled(str(exports["attention"].path))
    integer = [n for n in model.graph.nodes if n.op_type == "MatMulInteger"]
    floats = [n for n in model.graph.nodes if n.op_type == "MatMul"]  # attention's two activation products
    assert len(integer) == 6 and len(floats) == 2
    assert emitted_cost(model, Target.named("ort-cpu")) == sum(map(node_macs, integer)) + 4 * sum(map(node_macs, floats))


def test_assign_precision_can_choose_dynamic(exports):
    exported = exports["attention"]
    model = ir.load_model(str(exported.path))
    rng = np.random.default_rng(1)
    rows = [{"x": rng.standard_normal((2, 6, 32)).astype(np.float32)} for _ in range(8)]
    ctx = PassContext(calibration_data=open_calibration_data(rows, input_specs(model)))
    PassManager("canonicalize,fuse,insert-observers,calibrate,"
                "assign-precision{min_sqnr_db=40,levels=dynamic,fp32,progress=off},"
                "dynamic-quant{marked_only=true,reduce_range=true},place-qdq,fold-weights{reduce_range=true},cleanup"
                ).run(model, ctx)
    promoted = {p["unit"]: p["level"] for p in ctx.report["assign-precision"]["promoted"]}
    dynamic = {n.name for n in model.graph.nodes if n.op_type == "MatMulInteger"}
    assert "dynamic" in promoted.values() and dynamic == {u for u, level in promoted.items() if level == "dynamic"}
    feeds = {"x": rows[0]["x"]}
    assert sqnr_db(run_onnx(str(exported.path), feeds)[0], run_onnx(ir.to_onnx(model), feeds)[0]) > 35
