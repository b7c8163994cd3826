"""The equalize pass: the float function kept (ONNX Runtime), ranges against numpy, int8 gains
where channel ranges spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conv_nets import depthwise_net, images
from helpers import run_onnx
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler import ir
from qcompiler.passes import PassContext, PassError, PassManager, PipelineError

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
HEAD = "legalize-opset,freeze-weight-inputs,apply-overrides,canonicalize,fuse"
# fold-weights{reduce_range=true}: 7-bit weights run alike on every x86 CPU, with or without VNNI
INT8 = HEAD + ",{}insert-observers,calibrate,place-qdq,fold-weights{{reduce_range=true}},cleanup"


def case(name: str) -> tuple[onnx.ModelProto | str, object, object]:
    """(model, calibration data, evaluation data) of a golden case or of the depthwise net."""
    if name == "depthwise":
        return depthwise_net(), images(64, seed=1), images(64, seed=2)
    folder = GOLDEN / name
    return str(folder / "model.onnx"), str(folder / "calib.npz"), str(folder / "inputs.npz")


def fused(model: onnx.ModelProto | str) -> ir.Model:
    loaded = ir.load_model(model.SerializeToString() if isinstance(model, onnx.ModelProto) else model)
    PassManager("canonicalize,fuse").run(loaded)
    return loaded


def outputs(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run_onnx(ir.to_onnx(model), feeds)


@pytest.mark.parametrize("name, pairs", [("depthwise", 4), ("outlier_convnet", 1), ("resnet_like", 3),
                                         ("unet_like", 6), ("mobilenet_like", 0)])
def test_float_function_kept(name, pairs):
    model, _, held_out = case(name)
    feeds = held_out if isinstance(held_out, dict) else dict(np.load(held_out))
    feeds = {key: value[:16] for key, value in feeds.items()}
    before = fused(model)
    expected = outputs(before, feeds)
    ctx = PassContext()
    changed = PassManager("equalize").run(before, ctx).changed
    assert ctx.report["equalize"]["pairs"] == pairs and changed == (pairs > 0)
    for want, got in zip(expected, outputs(before, feeds)):
        assert np.max(np.abs(got - want)) <= 2e-5 * np.max(np.abs(want))


def pair_model(group: int, out_channels: int, bias: bool = True, seed: int = 0) -> onnx.ModelProto:
    """Conv 3 -> 8 channels (3x3, scattered channel scales), Relu, Conv 8 -> out_channels {group}."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)) * np.geomspace(0.05, 5, 8)[:, None, None, None]
    w2 = rng.standard_normal((out_channels, 8 // group, 3, 3))
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(w2.astype(np.float32), "w2")]
    conv1_inputs = ["x", "w1"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"))
        conv1_inputs.append("b1")
    nodes = [helper.make_node("Conv", conv1_inputs, ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", group=group)]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_weights(model: ir.Model) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    first, second = (n for n in model.graph.nodes if n.op_type == "Conv")
    bias = first.inputs[2].const_array if len(first.inputs) > 2 and first.inputs[2] is not None else None
    return first.inputs[1].const_array.astype(np.float64), second.inputs[1].const_array.astype(np.float64), bias


def input_ranges(w2: np.ndarray, group: int) -> np.ndarray:
    """max |W2| over the weights reading each input channel, written out channel by channel."""
    out_per_group, in_per_group = w2.shape[0] // group, w2.shape[1]
    return np.array([np.abs(w2[(c // in_per_group) * out_per_group:(c // in_per_group + 1) * out_per_group,
                               c % in_per_group]).max() for c in range(in_per_group * group)])


@pytest.mark.parametrize("group, out_channels", [(1, 5), (2, 4), (8, 8), (8, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_one_round_meets_both_ranges_at_their_geometric_mean(group, out_channels, bias):
    model = ir.load_model(pair_model(group, out_channels, bias).SerializeToString())
    w1, w2, b1 = conv_weights(model)
    r1, r2 = np.abs(w1).reshape(8, -1).max(axis=1), input_ranges(w2, group)
    s = np.sqrt(r1 * r2) / r2
    PassManager("equalize{rounds=1}").run(model)
    new_w1, new_w2, new_b1 = conv_weights(model)
    np.testing.assert_allclose(np.abs(new_w1).reshape(8, -1).max(axis=1), np.sqrt(r1 * r2), rtol=1e-6)
    np.testing.assert_allclose(input_ranges(new_w2, group), np.sqrt(r1 * r2), rtol=1e-6)
    np.testing.assert_allclose(new_w1, w1 / s[:, None, None, None], rtol=1e-6)
    if bias:
        np.testing.assert_allclose(new_b1, b1 / s, rtol=1e-6)
    else:
        assert new_b1 is None


def test_a_chain_runs_rounds_until_every_pair_is_balanced():
    model = fused(depthwise_net())
    ctx = PassContext()
    PassManager("equalize{rounds=200,tolerance=1e-7}").run(model, ctx)
    assert ctx.report["equalize"]["converged"] and 2 < ctx.report["equalize"]["rounds"] < 200
    convs = [n for n in model.graph.nodes if n.op_type == "Conv"]
    for first, second in zip(convs, convs[1:]):  # stem-dw0, dw0-pw0, pw0-dw1, dw1-pw1
        w1, w2 = first.inputs[1].const_array, second.inputs[1].const_array
        np.testing.assert_allclose(np.abs(w1).reshape(w1.shape[0], -1).max(axis=1),
                                   input_ranges(w2, second.attr("group", 1)), rtol=1e-5)


@pytest.mark.parametrize("name, base_at_most, equalized_at_least", [("depthwise", 10.0, 25.0),
                                                                      ("outlier_convnet", 0.0, 25.0)])
def test_int8_gains_where_channel_ranges_spread(name, base_at_most, equalized_at_least):
    """Measured (7-bit weights): depthwise net 5.3 -> 30.1 dB, outlier_convnet -3.0 -> 28.7 dB."""
    model, calib, held_out = case(name)
    plain = qcompiler.compile(model, calib, eval=held_out, pipeline=INT8.format(""))
    equalized = qcompiler.compile(model, calib, eval=held_out, pipeline=INT8.format("equalize,"))
    assert plain.report.outputs[0].sqnr_db < base_at_most
    assert equalized.report.outputs[0].sqnr_db > equalized_at_least


def test_after_calibrate_the_pipeline_is_refused_before_anything_runs():
    model = fused(depthwise_net())
    with pytest.raises(PipelineError, match="equalize must run before the model is calibrated"):
        PassManager("insert-observers,calibrate,equalize").run(model, PassContext(calibration_data=[images(4, 0)]))
    PassManager("insert-observers,calibrate").run(model, PassContext(calibration_data=[images(4, 0)]))
    with pytest.raises(PassError, match="run it before calibrate"):
        PassManager("equalize").run(model)


def test_options_are_checked():
    with pytest.raises(PipelineError, match="rounds must be at least 1"):
        PassManager("equalize{rounds=0}")
    with pytest.raises(PipelineError, match="tolerance must be > 0"):
        PassManager("equalize{tolerance=0.0}")
