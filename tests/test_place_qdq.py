"""End to end: calibrate, place Q/DQ, fold weights, export, and run the result in ONNX Runtime.

The reference is the float model in ONNX Runtime on held-out inputs (not the calibration
data); the quantized model must keep SQNR >= 25 dB, store its weights as int8, and let
ONNX Runtime fuse integer kernels (read from the optimized model ORT writes out).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import run_onnx
from test_calibrate import Batches

from qcompiler import ir
from qcompiler.ir.evaluate import open_session, sqnr_db
from qcompiler.passes import PassContext, PassError, PassManager, Target

# reduce_range: this CI's x86 CPUs lack VNNI, where full-range u8 x s8 kernels saturate (fold_weights.py rule 7)
PIPELINE = "canonicalize,fuse,insert-observers,calibrate,place-qdq,fold-weights{reduce_range=true},cleanup"
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "conv_relu"
# model -> ops of ORT's optimized model, one of which must appear
INTEGER_OPS = {
    "conv_relu": {"QLinearConv"},
    "conv_bn_pool": {"QLinearConv"},
    "mlp_matmul": {"QLinearMatMul", "MatMulIntegerToFloat", "QGemm"},
}



def random_batches(name: str, shape: tuple[int, ...], count: int, seed: int) -> Batches:
    rng = np.random.default_rng(seed)
    return Batches([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)])


def case(name: str, torch_exports) -> tuple[str, str, tuple[int, ...]]:
    """(model path, input name, batch input shape) of the golden model or a torch export."""
    if name == "conv_relu":
        (input_name, array), = np.load(GOLDEN / "inputs.npz").items()
        return str(GOLDEN / "model.onnx"), input_name, (8, *array.shape[1:])
    exported = torch_exports[name]
    (input_name, example), = exported.feeds.items()
    return str(exported.path), input_name, example.shape


def compile_model(path: str, data: Batches, pipeline: str = PIPELINE) -> onnx.ModelProto:
    model = ir.load_model(path)
    PassManager(pipeline).run(model, PassContext(calibration_data=data))
    proto = ir.to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def optimized_ops(proto: onnx.ModelProto, tmp_path) -> set[str]:
    open_session(proto, save_optimized=tmp_path / "optimized.onnx")
    return {node.op_type for node in onnx.load(tmp_path / "optimized.onnx").graph.node}


@pytest.mark.parametrize("name", sorted(INTEGER_OPS))
def test_quantized_model_runs_close_to_float_with_integer_kernels(name, torch_exports, tmp_path):
    path, input_name, shape = case(name, torch_exports)
    proto = compile_model(path, random_batches(input_name, shape, 8, seed=0))
    held_out = random_batches(input_name, shape, 2, seed=99)
    float_model = onnx.load(path)
    refs, outs = [], []
    for feeds in held_out:
        refs.append(run_onnx(float_model, feeds)[0])
        outs.append(run_onnx(proto, feeds)[0])
    figure = sqnr_db(np.concatenate(refs), np.concatenate(outs))
    print(f"{name}: SQNR {figure:.1f} dB")
    assert figure >= 25.0

    assert [o.name for o in proto.graph.output] == [o.name for o in float_model.graph.output]
    weights = {i.name: i for i in proto.graph.initializer}
    dequantized = [weights[n.input[0]] for n in proto.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert any(t.data_type == onnx.TensorProto.INT8 for t in dequantized)
    assert not [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2]
    assert optimized_ops(proto, tmp_path) & INTEGER_OPS[name]




CONV = """model ir_version=10 opset{ai.onnx=OPSET}
graph @g(%x: f32[1,2,4,4] range=[-1.0, 3.0]) {
  const %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  %c: f32[1,2,4,4] range=[-2.0, 2.0] = Conv(%x, %w) name="conv"
  %y: f32[1,32] = Flatten(%c) name="flatten"
  return %y, %c
}
"""


def conv_model(opset: int = 21, ranges: bool = True) -> ir.Model:
    text = CONV.replace("OPSET", str(opset))
    return ir.parse_model(text if ranges else text.replace(" range=[-2.0, 2.0]", ""))


def test_missing_range_names_the_value_and_asks_for_calibrate():
    with pytest.raises(PassError, match=r"%c has no observed range: run calibrate first"):
        PassManager("place-qdq").run(conv_model(ranges=False), PassContext())


def test_graph_outputs_keep_their_names_and_read_the_dq():
    model = conv_model()
    PassManager("place-qdq").run(model, PassContext())
    assert [v.name for v in model.graph.outputs] == ["y", "c"]
    assert [v.producer.op_type for v in model.graph.outputs] == ["DequantizeLinear", "DequantizeLinear"]
    flatten = next(n for n in model.graph.nodes if n.op_type == "Flatten")
    assert flatten.inputs[0].producer.op_type == "DequantizeLinear"
    conv = next(n for n in model.graph.nodes if n.op_type == "Conv")
    assert conv.outputs[0].name == "c_float"
    # y follows c: one scale, the one numpy gives for [-2, 2] in uint8 asymmetric
    assert model.graph.outputs[0].producer.inputs[1] is conv.outputs[0].consumers()[0].inputs[1]
    np.testing.assert_allclose(conv.outputs[0].quant.scale, 4.0 / 255, rtol=1e-6)


def test_tensorrt_quantizes_compute_inputs_only_in_symmetric_int8():
    model = conv_model()
    PassManager("place-qdq").run(model, PassContext(target=Target.named("tensorrt")))
    pairs = [n for n in model.graph.nodes if n.op_type == "QuantizeLinear"]
    assert [n.inputs[0].name for n in pairs] == ["x"]
    assert pairs[0].outputs[0].dtype == ir.DType.INT8 and int(pairs[0].inputs[2].const) == 0
    np.testing.assert_allclose(pairs[0].inputs[1].const, 3.0 / 127, rtol=1e-6)


@pytest.mark.parametrize("pipeline, target, opset, message", [
    ("place-qdq{activations=uint8}", "tensorrt", 21, "target tensorrt takes activations=int8"),
    ("place-qdq", "ort-cpu", 9, "needs opset >= 10"),
])
def test_refusals(pipeline, target, opset, message):
    with pytest.raises(PassError, match=message):
        PassManager(pipeline).run(conv_model(opset), PassContext(target=Target.named(target)))


# -- 16-bit activations ---------------------------------------------------------------------

CONTRIB = "com.microsoft"


def conv_relu_conv(opset: int) -> onnx.ModelProto:
    """x -> Conv -> Relu (%r) -> Conv -> y, 3x3 convs with bias, written at `opset`."""
    rng = np.random.default_rng(1)
    inits = [onnx.numpy_helper.from_array(a.astype(np.float32), name) for name, a in {
        "w1": rng.standard_normal((4, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(4) * 0.1,
        "w2": rng.standard_normal((4, 4, 3, 3)) * 0.3, "b2": rng.standard_normal(4) * 0.1}.items()]
    nodes = [onnx.helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             onnx.helper.make_node("Relu", ["c"], ["r"], name="relu"),
             onnx.helper.make_node("Conv", ["r", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4, 8, 8])], inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    proto.ir_version = 10 if opset >= 21 else 8
    return proto


def quantize_activations(proto: onnx.ModelProto, data: Batches, pipeline: str) -> onnx.ModelProto:
    model = ir.load_model(proto)
    PassManager(pipeline).run(model, PassContext(calibration_data=data))
    quantized = ir.to_onnx(model)
    onnx.checker.check_model(quantized, full_check=True)
    return quantized


def with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy whose graph also returns these values (ORT hands back only graph outputs)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return copy


def numpy_codes(x: np.ndarray, lo: float, hi: float, dtype: str) -> tuple[np.ndarray, np.float32]:
    """QuantizeLinear codes and scale for [lo, hi] by ONNX Runtime's convention: int16 symmetric with
    zero point 0 and codes +-32767, unsigned types asymmetric."""
    lo, hi = min(np.float32(lo), 0.0), max(np.float32(hi), 0.0)
    info = np.iinfo(dtype)
    if dtype == "int16":
        scale, zero_point = np.float32(max(-lo, hi) / info.max), 0
    else:
        scale = np.float32((hi - lo) / (info.max - info.min))
        zero_point = np.rint(-lo / np.float64(scale))
    return np.clip(np.rint(x / scale) + zero_point, info.min, info.max), scale


def ort_session(proto: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    return open_session(proto, optimize=optimize)


@pytest.mark.parametrize("opset, domain", [(21, ""), (17, CONTRIB)])
@pytest.mark.parametrize("dtype", ["int16", "uint16"])
def test_16bit_codes_are_numpys_on_the_observed_range(opset, domain, dtype):
    proto = conv_relu_conv(opset)
    data = random_batches("x", (2, 3, 8, 8), 3, seed=0)
    quantized = quantize_activations(proto, data, f"insert-observers,calibrate,place-qdq{{activations={dtype}}}")
    opsets = {o.domain: o.version for o in quantized.opset_import}
    assert opsets == ({"": 21} if opset == 21 else {"": 17, CONTRIB: 1})
    pairs = [n for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert {n.domain for n in pairs} == {domain}
    q_of = {n.input[0]: n.output[0] for n in pairs if n.op_type == "QuantizeLinear"}
    assert set(q_of) == {"x", "c", "r", "y_float"}  # c: the unfused Conv output is quantized too

    session = ort_session(with_outputs(quantized, ["r", q_of["x"], q_of["r"]]))
    float_session = ort_session(with_outputs(proto, ["r"]))
    r_float = np.concatenate([float_session.run(["r"], feeds)[0] for feeds in data])
    x_all = np.concatenate([feeds["x"] for feeds in data])
    r_ranges = (float(r_float.min()), float(r_float.max()))
    for feeds in data:
        r, x_q, r_q = session.run(["r", q_of["x"], q_of["r"]], feeds)
        assert x_q.dtype == np.dtype(dtype) and r_q.dtype == np.dtype(dtype)
        want_x, x_scale = numpy_codes(feeds["x"], x_all.min(), x_all.max(), dtype)
        want_r, r_scale = numpy_codes(r, *r_ranges, dtype)  # r: ORT's Relu of the dequantized path
        np.testing.assert_array_equal(x_q, want_x)
        np.testing.assert_array_equal(r_q, want_r)
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    assert scales["x_scale"] == x_scale and scales["r_scale"] == r_scale


@pytest.mark.parametrize("opset", [21, 17])
def test_int16_activations_gain_30_db_over_uint8(opset):
    """Activations alone: weights stay float, and ORT runs the graph as written, since its
    WeightBiasQuantization optimizer would quantize float weights between DQ and Q to int8.
    Measured on the calibration inputs, so nothing clips and only rounding noise counts."""
    proto = conv_relu_conv(opset)
    data = random_batches("x", (2, 3, 8, 8), 3, seed=0)
    reference = ort_session(proto)
    ref = np.concatenate([reference.run(None, feeds)[0] for feeds in data])
    figures = {}
    for dtype in ("uint8", "int16"):
        session = ort_session(quantize_activations(
            proto, data, f"fuse,insert-observers,calibrate,place-qdq{{activations={dtype}}}"), optimize=False)
        figures[dtype] = sqnr_db(ref, np.concatenate([session.run(None, feeds)[0] for feeds in data]))
    print(f"opset {opset}: SQNR uint8 {figures['uint8']:.1f} dB, int16 {figures['int16']:.1f} dB")
    assert figures["int16"] >= figures["uint8"] + 30


@pytest.mark.parametrize("opset", [21, 17])
def test_int16_activations_with_folded_weights_run_in_ort(opset):
    """ORT has no 16-bit QLinearConv: Convs run in float between DQs, with int8 weights and an int32
    bias whose scale comes from the activation's DQ, of either domain."""
    proto = conv_relu_conv(opset)
    data = random_batches("x", (2, 3, 8, 8), 3, seed=0)
    quantized = quantize_activations(proto, data, "fuse,insert-observers,calibrate,place-qdq{activations=int16},"
                                                  "fold-weights,cleanup")
    stored = {i.name: i.data_type for i in quantized.graph.initializer}
    dequantized = {stored[n.input[0]] for n in quantized.graph.node if n.op_type == "DequantizeLinear" and
                   n.input[0] in stored}
    assert dequantized == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}
    assert not {"b1", "b2"} & set(stored)  # no float bias left
    reference, session = ort_session(proto), ort_session(quantized)
    ref = np.concatenate([reference.run(None, feeds)[0] for feeds in data])
    out = np.concatenate([session.run(None, feeds)[0] for feeds in data])
    assert sqnr_db(ref, out) >= 30.0


def marked(proto: onnx.ModelProto, marks: dict[str, str]) -> ir.Model:
    model = ir.load_model(proto)
    for node in model.graph.nodes:
        if node.name in marks:
            node.meta["activations"] = marks[node.name]
    return model


def pair_dtypes(model: ir.Model) -> dict[str, tuple[ir.DType, str]]:
    """Quantized value -> (dtype, domain of its QuantizeLinear)."""
    return {n.inputs[0].name: (n.outputs[0].dtype, n.domain)
            for n in model.graph.nodes if n.op_type == "QuantizeLinear"}


def test_a_node_mark_sets_its_activations_and_other_values_keep_uint8():
    """conv2 (alone: no Relu after it) asks for int16: %r it reads and %y it makes become int16 in
    com.microsoft pairs (opset 17); %x, read by the conv1+relu group, keeps the option's uint8."""
    proto = conv_relu_conv(17)
    data = random_batches("x", (2, 3, 8, 8), 3, seed=0)
    model = marked(proto, {"conv2": "int16"})
    PassManager("fuse,insert-observers,calibrate,place-qdq").run(model, PassContext(calibration_data=data))
    assert pair_dtypes(model) == {"x": (ir.DType.UINT8, ""), "r": (ir.DType.INT16, CONTRIB),
                                  "y_float": (ir.DType.INT16, CONTRIB)}
    assert model.opset_imports == {"": 17, CONTRIB: 1}

    quantized = ir.to_onnx(model)
    q_of = {n.input[0]: n.output[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    session = ort_session(with_outputs(quantized, [q_of["x"], "r", q_of["r"]]))
    r_float = np.concatenate([ort_session(with_outputs(proto, ["r"])).run(["r"], f)[0] for f in data])
    x_all = np.concatenate([f["x"] for f in data])
    for feeds in data:
        x_q, r, r_q = session.run([q_of["x"], "r", q_of["r"]], feeds)
        np.testing.assert_array_equal(x_q, numpy_codes(feeds["x"], x_all.min(), x_all.max(), "uint8")[0])
        np.testing.assert_array_equal(r_q, numpy_codes(r, r_float.min(), r_float.max(), "int16")[0])


def test_a_mark_on_any_group_member_counts_for_the_group():
    """The Relu of the conv1+relu group asks for int16: the group's input %x and output %r take it."""
    model = marked(conv_relu_conv(21), {"relu": "int16"})
    data = random_batches("x", (2, 3, 8, 8), 2, seed=0)
    PassManager("fuse,insert-observers,calibrate,place-qdq").run(model, PassContext(calibration_data=data))
    assert pair_dtypes(model) == {"x": (ir.DType.INT16, ""), "r": (ir.DType.INT16, ""),
                                  "y_float": (ir.DType.UINT8, "")}
    assert model.opset_imports == {"": 21}


def test_contrib_pairs_count_as_qdq_form_when_the_pass_runs_again():
    model = conv_model(17)
    PassManager("place-qdq{activations=uint16}").run(model, PassContext())
    before = ir.print_model(model)
    assert "com.microsoft::QuantizeLinear" in before
    assert not PassManager("place-qdq{activations=uint16}").run(model, PassContext()).changed
    assert ir.print_model(model) == before


@pytest.mark.parametrize("target, mark, message", [
    ("ort-cpu", "int4", "asks for activations='int4'; target ort-cpu takes int16 or int8 or uint16"),
    ("tensorrt", "int16", "asks for activations='int16'; target tensorrt takes int8"),
])
def test_marks_the_target_does_not_take_are_refused(target, mark, message):
    model = conv_model()
    next(n for n in model.graph.nodes if n.name == "conv").meta["activations"] = mark
    with pytest.raises(PassError, match=re.escape(f"node 'conv' {message}")):
        PassManager("place-qdq").run(model, PassContext(target=Target.named(target)))
