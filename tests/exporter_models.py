"""Models shaped as real exporters write them, built with onnx.helper from fixed seeds."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weights(seed: int):
    rng = np.random.default_rng(seed)

    def weight(name, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) or 1
        array = rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(fan_in))
        return numpy_helper.from_array(array.astype(np.float32), name)

    return weight


def paddle_style_classifier(dims: list) -> onnx.ModelProto:
    """An orientation-classifier-shaped net at opset 11, as paddle2onnx writes one: input dims
    given as `dims`, Conv+BatchNorm, HardSigmoid*x (hard-swish before opset 14), MaxPool, GAP,
    MatMul+Add, Softmax; output [-1, 2]."""
    weight = _weights(0)
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


def text_recognizer(classes: int = 12) -> onnx.ModelProto:
    """A CRNN-shaped recognizer as paddle2onnx writes one: x [-1, 3, 32, -1] (text lines of any
    width) to per-position class scores [-1, W/4, classes]: strided Convs, a mean over the
    height, Transpose, MatMul+Add, Softmax over the classes (a CTC head)."""
    weight = _weights(1)
    initializers = [weight("c1_w", 16, 3, 3, 3), weight("c1_b", 16, scale=0.1),
                    weight("c2_w", 32, 16, 3, 3), weight("c2_b", 32, scale=0.1),
                    weight("fc_w", 32, classes), weight("fc_b", classes, scale=0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["pooled"], axes=[2], keepdims=0),
        helper.make_node("Transpose", ["pooled"], ["seq"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["seq", "fc_w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_b"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=2),
    ]
    graph = helper.make_graph(nodes, "paddle_rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 32, -1])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [-1, -1, classes])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="paddle2onnx")
    model.ir_version = 7
    return model


def text_lines(count: int, seed: int, widths=(64, 96, 128)) -> list[np.ndarray]:
    """`count` text-line crops [1, 3, 32, W], W cycling through `widths`: smooth strokes, not noise."""
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(count):
        width = widths[index % len(widths)]
        columns = np.cumsum(rng.standard_normal((1, 3, 1, width)), axis=-1) / 4
        rows = np.sin(np.linspace(0, np.pi, 32))[None, None, :, None]
        lines.append((columns * rows + 0.1 * rng.standard_normal((1, 3, 32, width))).astype(np.float32))
    return lines
