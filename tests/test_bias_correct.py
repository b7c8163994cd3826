"""The bias-correct pass: the mean output error per channel against numpy, with fold-weights' own
codes; SQNR on conv nets in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conv_nets import depthwise_net, images
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler import ir
from qcompiler.ir.quant import dequantize
from qcompiler.passes import PassContext, PassError, PassManager, PipelineError

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
HEAD = "legalize-opset,freeze-weight-inputs,apply-overrides,canonicalize,fuse"
C_IN, C_OUT, SIZE = 4, 6, 8


def single(op: str, bias: bool, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray | None]:
    """One Conv (3x3, pads 1), Gemm or MatMul (+ Add of a bias, as fuse groups it for 3-D inputs);
    (model, weight, bias)."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(C_OUT).astype(np.float32) if bias else None
    if op == "Conv":
        w = (0.3 * rng.standard_normal((C_OUT, C_IN, 3, 3))).astype(np.float32)
        shape, out = ["N", C_IN, SIZE, SIZE], "y"
        nodes = [helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["y"], name="conv", pads=[1, 1, 1, 1])]
    elif op == "Gemm":
        w = (0.3 * rng.standard_normal((C_OUT, C_IN))).astype(np.float32)  # [N, K]: transB
        shape, out = ["N", C_IN], "y"
        nodes = [helper.make_node("Gemm", ["x", "w", *(["b"] if bias else [])], ["y"], name="gemm", transB=1)]
    else:
        w = (0.3 * rng.standard_normal((C_IN, C_OUT))).astype(np.float32)
        shape, out = ["N", SIZE, C_IN], "y"
        nodes = [helper.make_node("MatMul", ["x", "w"], ["mm" if bias else "y"], name="mm")]
        if bias:
            nodes.append(helper.make_node("Add", ["mm", "b"], ["y"], name="add"))
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if bias else [])
    graph = helper.make_graph(nodes, "single", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w, b


def batches(op: str, count: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Inputs whose channels have means 1..C_IN: post-ReLU-like, so a weight error does not average out."""
    rng = np.random.default_rng(seed)
    shape = {"Conv": (8, C_IN, SIZE, SIZE), "Gemm": (32, C_IN), "MatMul": (4, SIZE, C_IN)}[op]
    means = np.arange(1, C_IN + 1).reshape([C_IN] + [1] * (len(shape) - 2)) if op == "Conv" else np.arange(1, C_IN + 1)
    return [{"x": (rng.standard_normal(shape) + means).astype(np.float32)} for _ in range(count)]


def layer(x: np.ndarray, op: str, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """The layer in numpy, float64; output channels on axis 1 (Conv) or last."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    if op == "Conv":
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        patches = np.stack([padded[:, :, i:i + SIZE, j:j + SIZE] for i in range(3) for j in range(3)], axis=-1)
        y = np.einsum("nchwk,ock->nohw", patches, w.reshape(C_OUT, C_IN, 9))
        return y + (0 if b is None else b[None, :, None, None])
    y = x @ (w.T if op == "Gemm" else w)
    return y + (0 if b is None else b)


def channel_means(y: np.ndarray, op: str) -> np.ndarray:
    return y.mean(axis=(0, 2, 3)) if op == "Conv" else y.reshape(-1, C_OUT).mean(axis=0)


def folded(model: ir.Model) -> tuple[np.ndarray, np.ndarray]:
    """The int8 weight fold-weights stored, dequantized, and the layer's bias as stored (float or int32)."""
    w_dq = next(n for n in model.graph.nodes
                if n.op_type == "DequantizeLinear" and n.inputs[0].is_const and n.inputs[0].const_array.ndim > 1)
    w_q = dequantize(w_dq.inputs[0].const_array, w_dq.inputs[0].quant)
    layer_node = next(n for n in model.graph.nodes if n.op_type in ("Conv", "Gemm", "Add"))
    bias = layer_node.inputs[2 if layer_node.op_type != "Add" else 1]
    if bias.producer is not None:  # an int32 bias behind its DequantizeLinear
        return w_q, dequantize(bias.producer.inputs[0].const_array, bias.producer.inputs[0].quant)
    return w_q, bias.const_array


@pytest.mark.parametrize("fold", ["", "{per_channel=false}", "{reduce_range=true}"])
@pytest.mark.parametrize("op, bias", [("Conv", True), ("Conv", False), ("Gemm", True), ("Gemm", False),
                                      ("MatMul", True)])  # a lone MatMul has no bias to correct: no_bias
def test_corrected_layer_has_no_mean_error_per_channel(op, bias, fold):
    """fold-weights' own int8 weights and the corrected bias, run in numpy on the data, miss the float
    layer's mean by ~0 per output channel; uncorrected, by the weight error times E[x]."""
    proto, w, b = single(op, bias)
    data = batches(op)
    pipeline = f"canonicalize,fuse,bias-correct,fold-weights{fold}"
    model = ir.load_model(proto.SerializeToString())
    ctx = PassContext(calibration_data=data)
    PassManager(pipeline).run(model, ctx)
    assert ctx.report["bias-correct"]["corrected"] == 1
    assert ctx.report["bias-correct"]["biases_created"] == (0 if bias else 1)
    w_q, corrected = folded(model)
    x = np.concatenate([feed["x"] for feed in data])
    reference = layer(x, op, w, b)
    before = channel_means(layer(x, op, w_q, b) - reference, op)
    after = channel_means(layer(x, op, w_q, corrected) - reference, op)
    assert np.abs(before).max() > 1e-3
    assert np.abs(after).max() < 1e-6 * np.abs(reference).max()


def test_int32_bias_keeps_the_correction_to_its_rounding():
    """Through place-qdq, the corrected bias is stored as int32 at s_in * s_w: off by at most half a step."""
    proto, w, b = single("Conv", True)
    data = batches("Conv")
    model = ir.load_model(proto.SerializeToString())
    PassManager("canonicalize,fuse,insert-observers,calibrate,bias-correct,place-qdq,fold-weights").run(
        model, PassContext(calibration_data=data))
    conv = next(n for n in model.graph.nodes if n.op_type == "Conv")
    stored = conv.inputs[2].producer.inputs[0]
    assert stored.const_array.dtype == np.int32
    w_q, corrected = folded(model)
    x = np.concatenate([feed["x"] for feed in data])
    error = channel_means(layer(x, "Conv", w_q, corrected) - layer(x, "Conv", w, b), "Conv")
    assert np.all(np.abs(error) <= 0.5 * stored.quant.scale + 1e-6)


def compile_sqnr(name: str, pipeline: str) -> float:
    if name == "depthwise":
        result = qcompiler.compile(depthwise_net(), images(64, seed=1), eval=images(64, seed=2), pipeline=pipeline)
    else:
        folder = GOLDEN / name
        result = qcompiler.compile(str(folder / "model.onnx"), str(folder / "calib.npz"),
                                   eval=str(folder / "inputs.npz"), pipeline=pipeline)
    return result.report.outputs[0].sqnr_db


@pytest.mark.parametrize("name, gain", [("depthwise", 5.0), ("resnet_like", 0.5), ("digits_cnn", 0.5),
                                        ("unet_like", 0.2)])
def test_int8_sqnr_gains_on_conv_nets(name, gain):
    """Measured with 7-bit weights (reduce_range, as on x86 CPUs without VNNI): depthwise net 5.3 ->
    13.4 dB, resnet_like 25.9 -> 26.8, digits_cnn 33.1 -> 34.0, unet_like 20.9 -> 21.3."""
    pipeline = HEAD + ",insert-observers,calibrate,{}place-qdq,fold-weights{{reduce_range=true}},cleanup"
    plain, corrected = compile_sqnr(name, pipeline.format("")), compile_sqnr(name, pipeline.format("bias-correct,"))
    assert corrected > plain + gain


def test_needs_data_and_runs_before_fold_weights():
    proto, _, _ = single("Conv", True)
    with pytest.raises(PassError, match="needs calibration data"):
        PassManager("bias-correct").run(ir.load_model(proto.SerializeToString()))
    with pytest.raises(PipelineError, match="bias-correct must run before the model is weights-folded"):
        PassManager("fold-weights,bias-correct").run(ir.load_model(proto.SerializeToString()),
                                                     PassContext(calibration_data=batches("Conv")))
    with pytest.raises(PipelineError, match="samples must be >= 0"):
        PassManager("bias-correct{samples=-1}")


def test_samples_reads_whole_batches_until_enough_rows():
    proto, _, _ = single("Conv", True)
    ctx = PassContext(calibration_data=batches("Conv", count=6))
    PassManager("bias-correct{samples=9}").run(ir.load_model(proto.SerializeToString()), ctx)
    assert ctx.report["bias-correct"]["batches"] == 2  # 8 rows, then 16 >= 9
