"""End to end: calibrate, place Q/DQ, fold weights, export, and run the result in ONNX Runtime.

The reference is the float model in ONNX Runtime on held-out inputs (not the calibration
data); the quantized model must keep SQNR >= 25 dB, store its weights as int8, and let
ONNX Runtime fuse integer kernels (read from the optimized model ORT writes out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import run_onnx
from test_calibrate import Batches

from qcompiler import ir
from qcompiler.passes import PassContext, PassError, PassManager

# reduce_range: this CI's x86 CPUs lack VNNI, where full-range u8 x s8 kernels saturate (fold_weights.py rule 7)
PIPELINE = "canonicalize,fuse,insert-observers,calibrate,place-qdq,fold-weights{reduce_range=true},cleanup"
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "conv_relu"
# model -> ops of ORT's optimized model, one of which must appear
INTEGER_OPS = {
    "conv_relu": {"QLinearConv"},
    "conv_bn_pool": {"QLinearConv"},
    "mlp_matmul": {"QLinearMatMul", "MatMulIntegerToFloat", "QGemm"},
}


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - out) ** 2)))


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
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


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
    PassManager("place-qdq{target=tensorrt}").run(model, PassContext())
    pairs = [n for n in model.graph.nodes if n.op_type == "QuantizeLinear"]
    assert [n.inputs[0].name for n in pairs] == ["x"]
    assert pairs[0].outputs[0].dtype == ir.DType.INT8 and int(pairs[0].inputs[2].const) == 0
    np.testing.assert_allclose(pairs[0].inputs[1].const, 3.0 / 127, rtol=1e-6)


@pytest.mark.parametrize("pipeline, opset, message", [
    ("place-qdq{target=tensorrt,activations=uint8}", 21, "takes activations=int8"),
    ("place-qdq", 9, "needs opset >= 10"),
])
def test_refusals(pipeline, opset, message):
    with pytest.raises(PassError, match=message):
        PassManager(pipeline).run(conv_model(opset), PassContext())
