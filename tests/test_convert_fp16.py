"""convert-fp16 against ONNX Runtime on the float model and numpy: SQNR, initializer bytes and file size, keep_io_types, blocked ops
and overflowing constants and activations kept float32 behind Casts, Cast pairs folded, idempotence, and
ONNX Runtime's float16 CPU kernels re-measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch_models import export_model

from qcompiler import ir
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.ir.evaluate import open_session, sqnr_db
from qcompiler.passes import PassContext, PassManager
from qcompiler.passes.transforms import convert_fp16

PIPELINE = "canonicalize,fuse,convert-fp16,cleanup"
GOLDEN = Path(__file__).resolve().parent.parent / "golden"



def convert(model: ir.Model, pipeline: str = PIPELINE, data=None) -> tuple[onnx.ModelProto, PassContext]:
    ctx = PassContext(calibration_data=data)
    PassManager(pipeline).run(model, ctx)
    proto = ir.to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)  # types agree with every schema
    return proto, ctx


def one_op_model(nodes: list, inputs: list, outputs: list, initializers: list = (), opset: int = 21) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return ir.load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def f32(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def float_bytes(proto: onnx.ModelProto, dtype: int) -> int:
    """Bytes of the initializers of `dtype`."""
    return sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer if t.data_type == dtype)


def casts_of(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Cast nodes by output name."""
    return {n.output[0]: n for n in proto.graph.node if n.op_type == "Cast"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fp16")
    return {name: export_model(name, directory) for name in ("conv_bn_pool", "attention")}


@pytest.mark.parametrize("name", ["conv_bn_pool", "attention"])
def test_outputs_within_fp16_tolerance_at_half_the_size(exported, name):
    """Measured: 72.4 dB (conv_bn_pool), 67.7 dB (attention); initializer bytes halve."""
    model = exported[name]
    proto, ctx = convert(ir.load_model(str(model.path)))
    float_proto = onnx.load(str(model.path))
    (reference,), (actual,) = run_onnx(float_proto, model.feeds), run_onnx(proto, model.feeds)
    assert actual.dtype == np.float32 and actual.shape == reference.shape
    assert sqnr_db(reference, actual) > 55
    assert all(t.data_type != TensorProto.FLOAT for t in proto.graph.initializer)
    baseline, _ = convert(ir.load_model(str(model.path)), "canonicalize,fuse,cleanup")
    assert float_bytes(proto, TensorProto.FLOAT16) * 2 == float_bytes(baseline, TensorProto.FLOAT) > 6000
    report = ctx.report["convert-fp16"]
    assert report["ratio"] > 1.95 and report["kept_float32"] == {}
    assert report["casts"] == 2  # the input and the output, nothing between the converted nodes
    assert [i.type.tensor_type.elem_type for i in (*proto.graph.input, *proto.graph.output)] == [TensorProto.FLOAT] * 2


def test_file_size_about_half():
    """golden/resnet_like: 389 kB of which 384 kB weights; measured 199 kB after."""
    path = GOLDEN / "resnet_like" / "model.onnx"
    proto, _ = convert(ir.load_model(str(path)))
    assert len(proto.SerializeToString()) < 0.53 * path.stat().st_size


def test_without_keep_io_types_inputs_and_outputs_are_float16(exported):
    model = exported["conv_bn_pool"]
    proto, ctx = convert(ir.load_model(str(model.path)), "canonicalize,fuse,convert-fp16{keep_io_types=false},cleanup")
    assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == [TensorProto.FLOAT16] * 2
    assert ctx.report["convert-fp16"]["casts"] == 0
    (reference,) = run_onnx(onnx.load(str(model.path)), model.feeds)
    (actual,) = run_onnx(proto, {"x": model.feeds["x"].astype(np.float16)})
    assert actual.dtype == np.float16 and sqnr_db(reference, actual) > 55


def test_blocked_op_stays_float32_between_casts():
    """Mul (float16) -> CumSum (blocked: float32) -> Relu (float16)."""
    w = np.linspace(-2, 2, 8, dtype=np.float32)
    model = one_op_model(
        [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("CumSum", ["m", "axis"], ["c"]),
         helper.make_node("Relu", ["c"], ["y"])],
        [f32("x", [3, 8])], [f32("y", [3, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1, np.int64), "axis")])
    proto, ctx = convert(model, "convert-fp16")
    nodes = {n.op_type: n for n in proto.graph.node if n.op_type != "Cast"}
    casts = casts_of(proto)
    into_cumsum = casts[nodes["CumSum"].input[0]]
    assert into_cumsum.input[0] == nodes["Mul"].output[0] and into_cumsum.attribute[0].i == TensorProto.FLOAT
    assert casts[nodes["Relu"].input[0]].input[0] == nodes["CumSum"].output[0]
    assert ctx.report["convert-fp16"]["kept_float32"] == {"blocked": 1}
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    (actual,) = run_onnx(proto, {"x": x})
    expected = np.maximum(np.cumsum(x.astype(np.float64) * w, axis=1), 0)
    np.testing.assert_allclose(actual, expected, rtol=2e-3, atol=2e-3)


def test_constant_beyond_float16_keeps_its_reader_float32():
    model = one_op_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "big"], ["y"])],
        [f32("x", [4])], [f32("y", [4])], [numpy_helper.from_array(np.array([1e6], np.float32), "big")])
    proto, ctx = convert(model, "convert-fp16")
    assert ctx.report["convert-fp16"]["kept_float32"] == {"constant_overflow": 1}
    assert [t.data_type for t in proto.graph.initializer] == [TensorProto.FLOAT]
    x = np.array([0.5, -1.0, 2.0, 3.0], np.float32)
    (actual,) = run_onnx(proto, {"x": x})
    np.testing.assert_allclose(actual, np.maximum(x, 0) * 1e6, rtol=1e-3)  # float16 would give inf


def test_calibration_keeps_overflowing_activations_float32():
    """x * 300 * 300 exceeds 65504 for |x| > 0.73: without data the float16 model gives inf, as onnx's reference
    evaluator (numpy in float16) shows; ORT's CPU provider, computing these ops in float32, hides it (rule 6)."""
    scale = numpy_helper.from_array(np.array([300.0], np.float32), "s")
    nodes = [helper.make_node("Mul", ["x", "s"], ["a"]), helper.make_node("Mul", ["a", "s"], ["b"]),
             helper.make_node("ReduceMean", ["b"], ["y"], keepdims=0)]
    x = np.random.default_rng(1).uniform(-3, 3, (2, 16)).astype(np.float32)
    expected = np.mean(x.astype(np.float64) * 90000)

    blind, _ = convert(one_op_model(nodes, [f32("x", [2, 16])], [f32("y", [])], [scale]), "convert-fp16")
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(ReferenceEvaluator(blind).run(None, {"x": x})[0])

    model = one_op_model(nodes, [f32("x", [2, 16])], [f32("y", [])], [scale])
    data = open_calibration_data([{"x": x}], input_specs(model))
    proto, ctx = convert(model, "convert-fp16", data)
    assert ctx.report["convert-fp16"]["kept_float32"] == {"activation_overflow": 2}  # the Mul making b, its reader
    assert [n.op_type for n in proto.graph.node] == ["Cast", "Mul", "Cast", "Mul", "ReduceMean"]
    bound = 2.0**-11 * np.abs(x).max() * 90000  # a float16 rounding of a, relative 2^-11, in every term of the mean
    for actual in (run_onnx(proto, {"x": x})[0], ReferenceEvaluator(proto).run(None, {"x": x})[0]):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=bound)


def test_precision_fp32_stays_float32_and_fp16_converts():
    model = one_op_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])],
                         [f32("x", [4])], [f32("y", [4])])
    relu, sigmoid = model.graph.nodes
    relu.meta["precision"], sigmoid.meta["precision"] = "fp32", "fp16"
    proto, ctx = convert(model, "convert-fp16")
    assert ctx.report["convert-fp16"]["kept_float32"] == {"by_choice": 1}
    assert [n.op_type for n in proto.graph.node] == ["Relu", "Cast", "Sigmoid", "Cast"]
    x = np.array([-1.0, 0.1, 0.7, 3.0], np.float32)
    np.testing.assert_allclose(run_onnx(proto, {"x": x})[0], 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-3)


def test_cast_of_an_integer_to_float32_becomes_one_cast_to_float16():
    model = one_op_model(
        [helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "nf"], ["y"])],
        [f32("x", [5]), helper.make_tensor_value_info("n", TensorProto.INT64, [5])], [f32("y", [5])])
    proto, _ = convert(model, "convert-fp16")
    casts = casts_of(proto)
    assert not any(c.input[0] in casts for c in casts.values())  # no Cast reads a Cast
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    assert casts[add.input[1]].input[0] == "n" and casts[add.input[1]].attribute[0].i == TensorProto.FLOAT16
    x, n = np.linspace(-1, 1, 5, dtype=np.float32), np.array([0, 1, 2, 300, 2049], np.int64)
    (actual,) = run_onnx(proto, {"x": x, "n": n})
    np.testing.assert_allclose(actual, x + n, rtol=1e-3)


def test_idempotent(exported):
    model = ir.load_model(str(exported["attention"].path))
    convert(model)
    before = ir.print_model(model, weights="inline")
    ctx = PassContext()
    assert not PassManager("convert-fp16").run(model, ctx).changed
    assert ir.print_model(model, weights="inline") == before and "convert-fp16" not in ctx.report


def h16(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT16, shape)


def ones(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float16), name)


def ort_inserts_casts(op_type: str, inputs: list, names: list, initializers: list, saved: str) -> bool:
    """Load a one-op float16 model; whether ORT's graph, saved to `saved`, gained Casts (no float16 kernel)."""
    node = helper.make_node(op_type, names, ["y"])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)
    proto = helper.make_model(helper.make_graph([node], "g", inputs, [output], initializers),
                              opset_imports=[helper.make_opsetid("", 21)])
    open_session(proto, optimize=False, save_optimized=saved)
    return any(n.op_type == "Cast" for n in onnx.load(saved).graph.node)


@pytest.mark.parametrize("op_type", ["Conv", "MatMul", "Relu", "Softmax", "Reshape", "Transpose", "LayerNormalization"])
def test_ort_cpu_fp16_kernels_remeasured(op_type, tmp_path):
    """Rule 6: ORT loads every float16 op, with Casts it inserts itself around those without a float16 kernel."""
    cases = {
        "Conv": ([h16("x", [1, 4, 8, 8])], ["x", "w"], [ones("w", 4, 4, 3, 3)]),
        "MatMul": ([h16("x", [2, 8])], ["x", "w"], [ones("w", 8, 3)]),
        "Relu": ([h16("x", [2, 8])], ["x"], []),
        "Softmax": ([h16("x", [2, 8])], ["x"], []),
        "Reshape": ([h16("x", [2, 8])], ["x", "s"], [numpy_helper.from_array(np.array([16], np.int64), "s")]),
        "Transpose": ([h16("x", [2, 8])], ["x"], []),
        "LayerNormalization": ([h16("x", [2, 8])], ["x", "g"], [ones("g", 8)]),
    }
    inputs, names, initializers = cases[op_type]
    inserted = ort_inserts_casts(op_type, inputs, names, initializers, str(tmp_path / "optimized.onnx"))
    assert inserted == (op_type not in convert_fp16.ORT_CPU_FP16_KERNELS)
