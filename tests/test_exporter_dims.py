"""Dims as exporters write them: -1 and 0 values and placeholder names are each a dynamic dim of their own."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run_onnx
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler import ir
from qcompiler.data import input_specs, open_calibration_data


def paddle_style_classifier(dims: list) -> onnx.ModelProto:
    """An orientation-classifier-shaped net at opset 11, as paddle2onnx writes one: input dims
    given as `dims`, Conv+BatchNorm, HardSigmoid*x (hard-swish before opset 14), MaxPool, GAP,
    MatMul+Add, Softmax; output [-1, 2]."""
    rng = np.random.default_rng(0)

    def weight(name, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) or 1
        array = rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(fan_in))
        return numpy_helper.from_array(array.astype(np.float32), name)

    initializers = [
        weight("conv1_w", 8, 3, 3, 3), weight("bn_scale", 8, scale=0.1), weight("bn_bias", 8, scale=0.1),
        weight("bn_mean", 8, scale=0.1), numpy_helper.from_array(np.ones(8, np.float32) * 0.5, "bn_var"),
        weight("conv2_w", 16, 8, 3, 3), weight("conv2_b", 16, scale=0.1),
        weight("fc_w", 16, 2), weight("fc_b", 2, scale=0.1),
    ]
    initializers[1] = numpy_helper.from_array(1 + numpy_helper.to_array(initializers[1]), "bn_scale")
    nodes = [
        helper.make_node("Conv", ["x", "conv1_w"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"]),
        helper.make_node("HardSigmoid", ["bn"], ["hs"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["bn", "hs"], ["act"]),
        helper.make_node("MaxPool", ["act"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool", "conv2_w", "conv2_b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(nodes, "paddle_cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [-1, 2])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="paddle2onnx")
    model.ir_version = 6
    return model


def images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, height, width)).astype(np.float32)


@pytest.mark.parametrize("dims", [[-1, 3, -1, -1], [0, 3, 0, 0], ["?", 3, "?", "?"], ["-1", 3, "-1", "-1"]])
def test_each_dynamic_dim_stands_alone(dims):
    model = ir.load_model(paddle_style_classifier(dims))
    assert model.graph.inputs[0].type.shape == (None, 3, None, None)
    assert model.graph.outputs[0].type.shape[1] == 2


def test_a_paddle_style_model_compiles_on_samples_of_two_spatial_sizes(tmp_path):
    proto = paddle_style_classifier([-1, 3, -1, -1])
    folder = tmp_path / "calib"
    folder.mkdir()
    for index in range(32):  # text-line crops: 48 high, two widths
        width = 192 if index % 2 else 160
        np.savez(folder / f"{index:03d}.npz", x=images(1, 48, width, seed=index))
    held_out = [{"x": images(1, 48, width, seed=100 + i)} for i, width in enumerate([192, 160, 128, 192])]

    result = qcompiler.compile(proto.SerializeToString(), folder, eval=held_out)

    assert result.report.settings["opset"].startswith("11 -> 13")
    quantized = ir.to_onnx(result.model)
    written = quantized.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in written] == [None, 3, None, None]
    ops = {node.op_type for node in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for feed in held_out:  # runs at every width, and stays close to the float model
        (want,), (got,) = run_onnx(proto, feed), run_onnx(quantized, feed)
        assert got.shape == want.shape == (1, 2) and np.abs(got - want).max() < 0.05
    (output,) = result.report.outputs
    assert output.sqnr_db > 20


def test_rows_of_unnamed_dims_are_not_tied_to_each_other():
    model = ir.load_model(paddle_style_classifier(["?", 3, "?", "?"]))
    data = open_calibration_data({"x": images(4, 48, 192, seed=0)}, input_specs(model))
    assert [feed["x"].shape for feed in data] == [(1, 3, 48, 192)] * 4
