"""fold-weights against numpy: int8 weights within half a step of the float ones per channel,
int32 biases within half a step of s_in * s_w, grouped ConvTranspose channel mapping, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import VNNI_CPU, run_onnx
from onnx import TensorProto, helper

from qcompiler import ir
from qcompiler.ir.evaluate import sqnr_db
from qcompiler.ir.fileio import MappedArrays
from qcompiler.passes import PassContext, PassError, PassManager
from qcompiler.passes.infra.variants import VariantCache

X_RANGE = (-1.5, 2.5)  # what calibrate would have written on %x


def build(opset: int = 21) -> onnx.ModelProto:
    """x -> Conv(w1, b1) -> ConvTranspose(w2 [4, 3, 2, 2], group=2, b2) -> Flatten -> Gemm(w3^T, b3).

    Conv's weight has an all-zero output channel; the biases are large enough to need
    many int32 codes."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1[2] = 0.0
    w2 = rng.standard_normal((4, 3, 2, 2)).astype(np.float32) / 2
    w3 = rng.standard_normal((5, 6 * 8 * 8)).astype(np.float32) / 10
    inits = {"w1": w1, "b1": rng.standard_normal(4).astype(np.float32), "w2": w2,
             "b2": rng.standard_normal(6).astype(np.float32), "w3": w3, "b3": rng.standard_normal(5).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ConvTranspose", ["c", "w2", "b2"], ["t"], group=2, strides=[2, 2], name="deconv"),
        helper.make_node("Flatten", ["t"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def folded(pipeline: str, opset: int = 21) -> tuple[ir.Model, dict[str, np.ndarray]]:
    proto = build(opset)
    model = ir.load_model(proto)
    model.graph.inputs[0].observed_range = X_RANGE
    for node in model.graph.nodes:
        node.outputs[0].observed_range = (-4.0, 4.0)
    PassManager(pipeline).run(model, PassContext(target=VNNI_CPU))  # full-range codes on any machine
    return model, {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


def reader_dq(model: ir.Model, op_type: str, index: int) -> ir.Node:
    node = next(n for n in model.graph.nodes if n.op_type == op_type)
    return node.inputs[index].producer


def numpy_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 per channel: absmax / 127, 1.0 for an all-zero channel (ORT's choice)."""
    absmax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
    return np.where(absmax > 0, absmax / 127, 1.0)


@pytest.mark.parametrize("op_type, name, axis", [("Conv", "w1", 0), ("ConvTranspose", "w2", 1), ("Gemm", "w3", 0)])
def test_weights_within_half_a_step_per_channel(op_type, name, axis):
    model, floats = folded("place-qdq,fold-weights")
    dq = reader_dq(model, op_type, 1)
    stored, scale = dq.inputs[0].const, dq.inputs[1].const
    assert stored.dtype == np.int8 and dq.attributes["axis"].value == axis
    assert not dq.inputs[2].const.any()
    np.testing.assert_allclose(scale, numpy_scales(floats[name], axis), rtol=1e-6)
    view = [1] * stored.ndim
    view[axis] = -1
    error = np.abs(stored.astype(np.float32) * scale.reshape(view) - floats[name])
    assert (error <= scale.reshape(view) / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("op_type, bias, weight, axis", [
    ("Conv", "b1", "w1", 0), ("ConvTranspose", "b2", "w2", 1), ("Gemm", "b3", "w3", 0)])
def test_biases_int32_within_half_a_step_of_s_in_times_s_w(op_type, bias, weight, axis):
    model, floats = folded("place-qdq,fold-weights")
    s_in = reader_dq(model, op_type, 0).inputs[1].const
    s_w = numpy_scales(floats[weight], axis)
    channels = floats[bias].size
    expected = s_in * np.tile(s_w, channels // s_w.size)  # ConvTranspose: channel c uses s_w[c mod C_out/group]
    dq = reader_dq(model, op_type, 2)
    codes, scale = dq.inputs[0].const, dq.inputs[1].const
    assert codes.dtype == np.int32 and not dq.inputs[2].const.any()
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    assert (np.abs(codes * scale.astype(np.float64) - floats[bias]) <= scale / 2 * (1 + 1e-6)).all()


def test_first_input_scale_comes_from_the_placed_pair():
    model, _ = folded("place-qdq,fold-weights")
    expected = (X_RANGE[1] - X_RANGE[0]) / 255
    np.testing.assert_allclose(reader_dq(model, "Conv", 0).inputs[1].const, expected, rtol=1e-6)


def test_without_quantized_activations_biases_stay_float_and_the_model_still_runs():
    model, floats = folded("fold-weights")
    for op_type, bias in (("Conv", "b1"), ("ConvTranspose", "b2"), ("Gemm", "b3")):
        node = next(n for n in model.graph.nodes if n.op_type == op_type)
        assert node.inputs[1].producer.op_type == "DequantizeLinear"
        np.testing.assert_array_equal(node.inputs[2].const, floats[bias])
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    ref = run_onnx(build(), {"x": x})[0]
    out = run_onnx(ir.to_onnx(model), {"x": x})[0]
    assert sqnr_db(ref, out) > 30


def test_per_tensor_when_asked():
    model, floats = folded("place-qdq,fold-weights{per_channel=false}")
    dq = reader_dq(model, "Conv", 1)
    assert "axis" not in dq.attributes and dq.inputs[1].const.shape == ()
    np.testing.assert_allclose(dq.inputs[1].const, np.abs(floats["w1"]).max() / 127, rtol=1e-6)


def test_per_channel_below_opset_13_is_refused():
    with pytest.raises(PassError, match="needs opset >= 13"):
        folded("fold-weights", opset=12)


def test_variants_of_one_model_share_each_weights_codes_and_fp16_copy():
    """With a VariantCache, clones of one model get the codes of the first fold: the same
    arrays, read-only and mapped, equal to an uncached fold; other options compute anew."""
    base = ir.load_model(build())
    base.graph.inputs[0].observed_range = X_RANGE
    for node in base.graph.nodes:
        node.outputs[0].observed_range = (-4.0, 4.0)
    next(n for n in base.graph.nodes if n.op_type == "Gemm").meta["precision"] = "fp16"
    cache = VariantCache(MappedArrays())

    def emit(pipeline: str, variants: VariantCache | None) -> dict[str, np.ndarray]:
        variant = ir.clone_model(base)
        PassManager(pipeline).run(variant, PassContext(target=VNNI_CPU, variants=variants))
        return {v.name: v.const for v in variant.graph.constants if v.name.endswith(("_quantized", "_fp16"))}

    first, second = emit("place-qdq,fold-weights", cache), emit("place-qdq,fold-weights", cache)
    uncached = emit("place-qdq,fold-weights", None)
    assert sorted(first) == sorted(uncached) == ["b1_quantized", "b2_quantized", "b3_fp16", "w1_quantized",
                                                 "w2_quantized", "w3_fp16"]
    for name in ("w1_quantized", "w2_quantized", "w3_fp16", "b3_fp16"):
        assert second[name] is first[name]
        np.testing.assert_array_equal(first[name], uncached[name])
    assert not first["w3_fp16"].flags.writeable and first["b3_fp16"].flags.writeable  # mapped from 1 KB on
    assert cache.hits == 4  # biases depend on the activation scale: folded in each variant
    reduced = emit("place-qdq,fold-weights{reduce_range=true}", cache)
    assert np.abs(reduced["w1_quantized"]).max() == 64 and cache.hits == 6  # new codes; the same fp16 copies


def test_a_constant_beyond_float16_stays_float32_in_every_variant():
    base = ir.load_model(build())
    base.graph.inputs[0].observed_range = X_RANGE
    for node in base.graph.nodes:
        node.outputs[0].observed_range = (-4.0, 4.0)
    gemm = next(n for n in base.graph.nodes if n.op_type == "Gemm")
    gemm.meta["precision"] = "fp16"
    big = gemm.inputs[1].const_array.copy()
    big[0, 0] = 1e5  # past float16's largest finite 65504
    gemm.inputs[1].const = big
    cache = VariantCache(MappedArrays())
    for variants in (cache, cache, None):
        variant = ir.clone_model(base)
        PassManager("place-qdq,fold-weights").run(variant, PassContext(target=VNNI_CPU, variants=variants))
        names = {v.name for v in variant.graph.constants}
        assert "w3" in names and "w3_fp16" not in names and "b3_fp16" in names
