"""Precision levels on one node (rules.PRECISIONS), emitted by place-qdq and fold-weights and run in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run_onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir, passes
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.ir.evaluate import sqnr_db
from qcompiler.kernels import kernel_report

PIPELINE = "canonicalize,fuse,insert-observers,calibrate,place-qdq,fold-weights{reduce_range=true},cleanup"


def three_convs() -> onnx.ModelProto:
    """x -> conv1+relu -> conv2+relu -> conv3+relu -> y, 3x3 convs with fixed random weights."""
    rng = np.random.default_rng(0)
    nodes, weights, source = [], [], "x"
    for k, (cin, cout) in enumerate([(8, 16), (16, 16), (16, 8)], start=1):
        name = f"conv{k}"
        weights += [numpy_helper.from_array(rng.normal(0, 0.2, (cout, cin, 3, 3)).astype(np.float32), f"{name}_w"),
                    numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}_b")]
        output = "y" if k == 3 else f"r{k}"
        nodes += [helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_o"], name=name,
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{name}_o"], [output], name=f"{name}_relu")]
        source = output
    graph = helper.make_graph(nodes, "three", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CALIB = {"x": np.random.default_rng(1).normal(size=(8, 8, 16, 16)).astype(np.float32)}


def compiled(level: str, target: str = "ort-cpu") -> ir.Model:
    model = ir.load_model(three_convs())
    next(n for n in model.graph.nodes if n.name == "conv2").meta["precision"] = level
    data = open_calibration_data(CALIB, input_specs(model))
    context = passes.PassContext(target=passes.Target.named(target), calibration_data=data)
    passes.PassManager(PIPELINE).run(model, context)
    return model


def sqnr(model: ir.Model) -> float:
    reference = run_onnx(three_convs(), {"x": CALIB["x"][:1]})[0]
    actual = run_onnx(ir.to_onnx(model), {"x": CALIB["x"][:1]})[0]
    return sqnr_db(reference, actual)


@pytest.mark.parametrize("level", ["fp32", "fp16"])
def test_a_node_kept_float_runs_in_float_in_onnx_runtime(level):
    """Reading the float value, not a DQ, keeps ORT's WeightBiasQuantization from running it as QLinearConv."""
    model = compiled(level)
    conv2 = next(n for n in model.graph.nodes if n.name == "conv2")
    assert all(not (v.producer and v.producer.op_type == "DequantizeLinear") for v in conv2.inputs[:1])
    report = kernel_report(model)
    assert report.op_counts.get("com.microsoft::QLinearConv", 0) + report.op_counts.get("QLinearConv", 0) == 1
    assert "conv2" in report.float_nodes and "conv3" not in report.float_nodes
    assert sqnr(model) > sqnr(compiled("int8"))


def test_fp16_stores_weights_in_half_the_bytes_read_through_a_cast():
    proto = ir.to_onnx(compiled("fp16"))
    stored = {t.name: t for t in proto.graph.initializer}
    assert stored["conv2_w_fp16"].data_type == TensorProto.FLOAT16
    assert "conv2_w" not in stored
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert {n.input[0] for n in casts} == {"conv2_w_fp16", "conv2_b_fp16"}
    original = numpy_helper.to_array(next(t for t in three_convs().graph.initializer if t.name == "conv2_w"))
    np.testing.assert_array_equal(numpy_helper.to_array(stored["conv2_w_fp16"]), original.astype(np.float16))
    assert proto.ByteSize() < ir.to_onnx(compiled("fp32")).ByteSize()


def test_w8a16_gives_the_node_16_bit_activations_and_int8_weights():
    model = compiled("w8a16")
    conv2 = next(n for n in model.graph.nodes if n.name == "conv2")
    x_dq, w_dq = conv2.inputs[0].producer, conv2.inputs[1].producer
    assert x_dq.op_type == "DequantizeLinear" and x_dq.domain == "com.microsoft"  # opset 17: contrib 16-bit pairs
    assert x_dq.inputs[0].dtype == ir.DType.INT16
    assert w_dq.inputs[0].dtype == ir.DType.INT8
    relu_out = conv2.outputs[0].consumers()[0].outputs[0]
    assert relu_out.quant.dtype == ir.DType.INT16


def test_place_qdq_runs_twice_without_a_second_pair_for_a_float_reader():
    model = compiled("fp32")
    before = sum(n.op_type == "QuantizeLinear" for n in model.graph.nodes)
    passes.PassManager("place-qdq").run(model, passes.PassContext())
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.nodes) == before


def test_unknown_level_and_a_level_the_target_cannot_emit_are_refused():
    with pytest.raises(passes.PassError, match="precision='int4'.*int8, dynamic, w8a16, fp16, fp32"):
        compiled("int4")
    with pytest.raises(passes.PassError, match=r"activations='int16' \(precision w8a16\).*tensorrt"):
        compiled("w8a16", target="tensorrt")


def test_a_weight_scheme_mark_overrides_per_channel_for_its_node():
    model = ir.load_model(three_convs())
    next(n for n in model.graph.nodes if n.name == "conv2").meta["weight_scheme"] = "per-tensor"
    data = open_calibration_data(CALIB, input_specs(model))
    passes.PassManager(PIPELINE).run(model, passes.PassContext(calibration_data=data))
    scales = {n.name: n.inputs[1].producer.inputs[1].const for n in model.graph.nodes if n.op_type == "Conv"}
    assert scales["conv2"].shape == () and scales["conv1"].shape == (16,) and scales["conv3"].shape == (8,)
    w = numpy_helper.to_array(next(t for t in three_convs().graph.initializer if t.name == "conv2_w"))
    assert scales["conv2"] == pytest.approx(2 * np.abs(w).max() / 127)  # reduce_range: one bit less
