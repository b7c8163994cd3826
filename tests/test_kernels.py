"""The kernel report: integer share of compute after ORT's fusions, per target, and MACs by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir, passes
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.kernels import kernel_report
from qcompiler.passes.analyses.cost import node_macs

GOLDEN = Path(__file__).parents[1] / "golden" / "conv_relu" / "model.onnx"
PIPELINE = "canonicalize,fuse,insert-observers,calibrate,place-qdq,fold-weights{reduce_range=true},cleanup"
RNG = np.random.default_rng(3)


def quantized(model: ir.Model, target: str, feeds: dict[str, np.ndarray]) -> ir.Model:
    data = open_calibration_data(feeds, input_specs(model))
    passes.PassManager(PIPELINE).run(model, passes.PassContext(target=passes.Target.named(target), calibration_data=data))
    return model


def conv_net(target: str | None) -> ir.Model:
    """Conv+Relu, MaxPool, Conv+Relu, Add, GlobalAveragePool, Flatten, Gemm (golden/conv_relu)."""
    model = ir.load_model(GOLDEN)
    if target is None:
        return model
    return quantized(model, target, {"x": RNG.standard_normal((8, 3, 16, 16)).astype(np.float32)})


def matmul_net(path: Path) -> ir.Model:
    """Two MatMuls with weights (the first through a Relu), one of two activations, and a ConvTranspose."""
    weights = {"w1": (16, 32), "w2": (32, 8), "wt": (4, 6, 3, 3)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
         helper.make_node("Relu", ["m1"], ["r1"], name="relu"),
         helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
         helper.make_node("Transpose", ["m2"], ["t"], perm=[0, 2, 1], name="tr"),
         helper.make_node("MatMul", ["m2", "t"], ["y"], name="mm_act"),
         helper.make_node("ConvTranspose", ["img", "wt"], ["ct"], name="deconv", strides=[2, 2])],
        "matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("ct", TensorProto.FLOAT, None)],
        [numpy_helper.from_array((0.3 * RNG.standard_normal(shape)).astype(np.float32), name)
         for name, shape in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    feeds = {"x": RNG.standard_normal((4, 4, 16)).astype(np.float32),
             "img": RNG.standard_normal((4, 4, 5, 5)).astype(np.float32)}
    return quantized(ir.load_model(path), "ort-cpu", feeds)


def conv_macs(c_out: int, c_in: int, group: int, kh: int, kw: int, h_out: int, w_out: int) -> int:
    return c_out * c_in // group * kh * kw * h_out * w_out


GOLDEN_MACS = {"conv1": conv_macs(8, 3, 1, 3, 3, 16, 16), "conv2": conv_macs(8, 8, 1, 3, 3, 8, 8), "fc": 8 * 10}


def test_ort_cpu_target_runs_all_compute_in_integer_kernels():
    report = kernel_report(conv_net("ort-cpu"))
    assert report.integer_share >= 0.95
    assert report.float_nodes == []
    assert any(op.endswith("QLinearConv") for op in report.op_counts)
    assert report.op_counts["com.microsoft::QGemm"] == 1
    assert report.integer_flops == 2 * sum(GOLDEN_MACS.values()) and report.float_flops == 0


def test_tensorrt_target_leaves_convs_float_without_an_output_q():
    """Only inputs quantized: ORT cannot fuse Conv into QLinearConv; Gemm still becomes QGemm (float output)."""
    report = kernel_report(conv_net("tensorrt"))
    assert report.float_nodes == ["conv1", "conv2"]
    assert not any("QLinearConv" in op for op in report.op_counts)
    assert report.integer_flops == 2 * GOLDEN_MACS["fc"]
    assert report.float_flops == 2 * (GOLDEN_MACS["conv1"] + GOLDEN_MACS["conv2"])
    assert report.integer_share == pytest.approx(GOLDEN_MACS["fc"] / sum(GOLDEN_MACS.values()))
    assert report.integer_share < 0.01


def test_float_model_has_no_integer_share():
    report = kernel_report(conv_net(None))
    assert report.integer_share == 0.0 and report.integer_flops == 0
    assert report.float_nodes == ["conv1", "conv2", "fc"]
    assert report.summary() == ("integer kernels carry 0.0% of the Conv/Gemm/MatMul compute; "
                                "3 node(s) run in float: conv1, conv2, fc")


def test_a_float_conv_beside_a_fused_one_on_the_same_input_is_listed():
    """Both convs read one quantized activation (a weak anchor), the float one first in graph order;
    the quantized weight tells which one ORT fused."""
    model = ir.load_model(GOLDEN)
    conv1 = next(node for node in model.graph.nodes if node.name == "conv1")
    second = ir.Node("Conv", [conv1.inputs[0], conv1.inputs[1]], [ir.Value("side", conv1.outputs[0].type)],
                     attributes={"pads": [1, 1, 1, 1]}, name="side_conv", meta={"quantize": False})
    model.graph.insert_before(conv1, second)
    model.graph.set_outputs([*model.graph.outputs, second.outputs[0]])
    report = kernel_report(quantized(model, "ort-cpu", {"x": RNG.standard_normal((8, 3, 16, 16)).astype(np.float32)}))
    assert report.float_nodes == ["side_conv"]
    macs = GOLDEN_MACS["conv1"]
    assert report.integer_share == pytest.approx(sum(GOLDEN_MACS.values()) / (sum(GOLDEN_MACS.values()) + macs))


def test_matmuls_fuse_and_conv_transpose_stays_float(tmp_path):
    report = kernel_report(matmul_net(tmp_path / "matmuls.onnx"))
    assert report.op_counts["QLinearMatMul"] == 3
    assert report.float_nodes == ["deconv"]
    matmuls, deconv = 4 * 32 * 16 + 4 * 8 * 32 + 4 * 4 * 8, 4 * 5 * 5 * 6 * 3 * 3  # batch N counts 1
    assert (report.integer_flops, report.float_flops) == (2 * matmuls, 2 * deconv)


def test_conv_macs_by_hand_with_groups_strides_and_a_symbolic_batch(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1], name="conv")],
        "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((6, 2, 3, 3), np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "grouped.onnx")
    (conv,) = ir.load_model(tmp_path / "grouped.onnx").graph.nodes
    assert conv.outputs[0].shape == ("N", 6, 5, 5)
    assert node_macs(conv) == conv_macs(6, 4, 2, 3, 3, 5, 5)
    conv.outputs[0].type = None  # unknown output shape: the input's spatial size stands in
    assert node_macs(conv) == conv_macs(6, 4, 2, 3, 3, 9, 9)


def test_golden_node_macs_by_hand():
    nodes = {node.name: node for node in conv_net(None).graph.nodes}
    assert {name: node_macs(nodes[name]) for name in GOLDEN_MACS} == GOLDEN_MACS


def test_gemm_macs_read_transpose_flags_by_value():
    """transA=0 written out is no transpose: M x K x N = 4 x 16 x 8 either way."""
    x = ir.Value("x", ir.TensorType(ir.DType.FLOAT, (4, 16)))
    w = ir.Value("w", const=np.zeros((16, 8), np.float32))
    for attributes in ({}, {"transA": 0, "transB": 0}):
        gemm = ir.Node("Gemm", [x, w], [ir.Value("y", ir.TensorType(ir.DType.FLOAT, (4, 8)))], attributes=attributes)
        assert node_macs(gemm) == 4 * 16 * 8, attributes
