"""Small conv nets built with onnx.helper for the equalize and bias-correct tests: a
depthwise-separable ReLU net whose channels span a wide range, and its data."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IMAGE = (3, 16, 16)


def depthwise_net(spread: float = 100.0, seed: int = 0) -> onnx.ModelProto:
    """Stem Conv+Relu, then two depthwise 3x3 + Relu, pointwise 1x1 (+ Relu) blocks, GAP, Gemm.

    Each depthwise Conv's channel c has its weights and bias multiplied by a factor from
    a log-spaced ladder over `spread` (shuffled), as folding a BatchNorm with scattered
    scales leaves them; the pointwise Conv after it divides its input channel c by the
    same factor, so the function is that of the unscaled net, but the activation between
    the two holds channels `spread` times apart.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []

    def const(name: str, data: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(np.asarray(data, np.float32), name))
        return name

    def conv(x: str, name: str, w: np.ndarray, b: np.ndarray, relu: bool, **attributes) -> str:
        nodes.append(helper.make_node("Conv", [x, const(f"{name}.w", w), const(f"{name}.b", b)], [name], name=name,
                                      **attributes))
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    def he(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))

    x = conv("x", "stem", he(16, 3, 3, 3), 0.1 * rng.standard_normal(16), True, pads=[1, 1, 1, 1])
    channels = 16
    for block, out in enumerate((32, 32)):
        factors = rng.permutation(np.geomspace(1.0, spread, channels) / np.sqrt(spread))
        dw = he(channels, 1, 3, 3) * factors[:, None, None, None]
        x = conv(x, f"dw{block}", dw, 0.1 * rng.standard_normal(channels) * factors, True, group=channels,
                 pads=[1, 1, 1, 1])
        pw = he(out, channels, 1, 1) / factors[None, :, None, None]
        x = conv(x, f"pw{block}", pw, 0.1 * rng.standard_normal(out), block == 0)
        channels = out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    nodes.append(helper.make_node("Gemm", ["flat", const("head.w", he(10, channels)), const("head.b", np.zeros(10))],
                                  ["logits"], name="head", transB=1))
    graph = helper.make_graph(nodes, "depthwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   ["N", *IMAGE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def images(count: int, seed: int) -> dict[str, np.ndarray]:
    """Smooth random images (a 3x3 box blur of normal noise, twice): neighbouring pixels correlate."""
    x = np.random.default_rng(seed).standard_normal((count, *IMAGE))
    for _ in range(2):
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        x = sum(padded[:, :, i:i + IMAGE[1], j:j + IMAGE[2]] for i in range(3) for j in range(3)) / 9
    return {"x": (x / x.std()).astype(np.float32)}
