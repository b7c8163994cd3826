"""A model ONNX Runtime quantized (quantize_static, QDQ format) imports with its parameters kept.

golden/resnet_like (Conv, Add residuals, MaxPool, GlobalAveragePool, Gemm) is quantized by
ONNX Runtime's own tool on the case's calibration images, then compiled with
`on_quantized="keep"`: every pair keeps ORT's scale and zero point, nothing is added,
and the figures against the float model are ORT's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_onnx
from onnx import numpy_helper

import qcompiler
from qcompiler import ir
from qcompiler.ir.evaluate import sqnr_db
from qcompiler.passes import Target
from qcompiler.validate import compare_models

CASE = Path(__file__).resolve().parent.parent / "golden" / "resnet_like"


@pytest.fixture(scope="module")
def ort_quantized(tmp_path_factory) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            with np.load(CASE / "calib.npz") as calib:
                self.batches = iter([{"x": calib["x"][i:i + 8]} for i in range(0, len(calib["x"]), 8)])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path_factory.mktemp("ort") / "resnet_like_qdq.onnx"
    quantize_static(CASE / "model.onnx", path, Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=Target.named("ort-cpu").reduce_range[0], activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return path


@pytest.fixture(scope="module")
def kept(ort_quantized):
    return qcompiler.compile(ort_quantized, CASE / "calib.npz", eval=CASE / "inputs.npz", on_quantized="keep")


def _dequantizers(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """DequantizeLinear output name -> (scale, zero point), read from the initializers."""
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.output[0]: (constants[n.input[1]], constants[n.input[2]])
            for n in model.graph.node if n.op_type == "DequantizeLinear"}



def test_every_scale_is_kept(ort_quantized, kept):
    theirs = _dequantizers(onnx.load(ort_quantized))
    ours = _dequantizers(ir.to_onnx(kept.model))
    assert len(theirs) >= 30 and ours.keys() == theirs.keys()
    for name, (scale, zero_point) in theirs.items():
        np.testing.assert_array_equal(ours[name][0], scale, err_msg=name)
        np.testing.assert_array_equal(ours[name][1], zero_point, err_msg=name)
    assert kept.report.qdq_nodes == {"DequantizeLinear": len(theirs), "QuantizeLinear": 16}


def test_revalidated_figures_are_onnx_runtimes(ort_quantized, kept):
    with np.load(CASE / "inputs.npz") as inputs:
        feeds = dict(inputs)
    float_out = run_onnx(str(CASE / "model.onnx"), feeds)[0]
    theirs = run_onnx(str(ort_quantized), feeds)[0]
    ours = run_onnx(ir.to_onnx(kept.model), feeds)[0]
    np.testing.assert_array_equal(ours, theirs)  # the same model runs in ONNX Runtime
    (metrics,) = compare_models(CASE / "model.onnx", ir.to_onnx(kept.model).SerializeToString(), [feeds])
    assert metrics.sqnr_db == pytest.approx(sqnr_db(float_out, theirs), abs=0.1)
    assert metrics.top1_agreement == np.mean(float_out.argmax(1) == theirs.argmax(1))
    # by itself compile measures against the model it was given, which it left as it was
    assert kept.report.outputs[0].sqnr_db == np.inf and kept.report.outputs[0].top1_agreement == 1.0
    assert kept.report.kernels.integer_share >= 0.95
    revalidated = qcompiler.compile(ort_quantized, eval=CASE / "inputs.npz", on_quantized="keep",
                                    reference=CASE / "model.onnx")
    assert revalidated.report.outputs[0].sqnr_db == pytest.approx(sqnr_db(float_out, theirs), abs=0.1)
    assert revalidated.report.outputs[0].top1_agreement == metrics.top1_agreement


def test_fake_quantized_weights_from_another_tool_are_stored_as_int8(tmp_path):
    """DQ(Q(w)) on a float constant, as fake-quant exports write it: fold-weights stores the codes."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    nodes = [
        onnx.helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        onnx.helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        onnx.helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=1),
        onnx.helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
        onnx.helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    constants = [numpy_helper.from_array(a, n) for n, a in (
        ("xs", np.float32(0.02)), ("xz", np.uint8(128)), ("w", w), ("ws", scale), ("wz", np.zeros(8, np.int8)))]
    graph = onnx.helper.make_graph(nodes, "fq", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 16])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 8])], constants)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    expected = run_onnx(model, feeds)[0]

    result = qcompiler.compile(model, [feeds], eval=[feeds], on_quantized="keep")  # data: the MatMul's output
    (stored,) = [v for v in result.model.graph.constants if v.dtype == ir.DType.INT8 and v.shape == (16, 8)]
    np.testing.assert_array_equal(stored.const, np.clip(np.round(w / scale), -128, 127).astype(np.int8))
    assert not any(v.dtype == ir.DType.FLOAT and v.shape == (16, 8) for v in result.model.graph.constants)
    assert result.report.passes[[p.name for p in result.report.passes].index("fold-weights")].stats[
        "quantize_folded"] == 1
    assert sqnr_db(expected, run_onnx(ir.to_onnx(result.model), feeds)[0]) > 35  # only y's new 8-bit step added
