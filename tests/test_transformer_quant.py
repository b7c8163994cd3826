"""A six-layer BERT-style encoder with outlier channels, compiled from its torch module.

SmoothQuant must lift int8 accuracy well past plain int8 and past ONNX Runtime's
`quantize_static` on the same calibration data; every figure is numpy on ONNX Runtime
outputs over held-out data, the float reference being ONNX Runtime on the float export.
"""

from __future__ import annotations

import encoder_standins as standins
import numpy as np
import pytest
import torch
from encoder_model import build_encoder, token_batches
from helpers import run_onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    quantize_dynamic,
    quantize_static,
)
from qcompiler.ir.evaluate import ValueTap, outputs_over, sqnr_db

import qcompiler
from qcompiler import ir, passes
from qcompiler.torch import export

CALIBRATION = token_batches(64, 1, lengths=(16, 48))
HELD_OUT = token_batches(16, 2, lengths=(16, 48))
DIMS = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}}


def _outputs(model) -> list[np.ndarray]:
    return [run_onnx(model, feed)[0] for feed in HELD_OUT]


class _Reader(CalibrationDataReader):
    def __init__(self) -> None:
        self.feeds = iter(CALIBRATION)

    def get_next(self):
        return next(self.feeds, None)


@pytest.fixture(scope="module")
def encoder():
    module = build_encoder()
    example = (torch.from_numpy(CALIBRATION[0]["input_ids"]),)
    float_model = export(module, example, dynamic_shapes=DIMS)
    return module, example, float_model


def test_smooth_quant_beats_plain_int8_and_onnxruntime(encoder, tmp_path):
    module, example, float_model = encoder
    float_path = tmp_path / "float.onnx"
    ir.save_model(float_model, float_path)
    reference = _outputs(str(float_path))
    from_torch = [module(torch.from_numpy(feed["input_ids"])).detach().numpy() for feed in HELD_OUT]
    assert sqnr_db(from_torch, reference) > 80  # the export computes what the module does

    smooth = qcompiler.compile(module, CALIBRATION, eval=HELD_OUT, example_inputs=example, dynamic_shapes=DIMS,
                               pipeline="int8-smooth")
    plain = qcompiler.compile(ir.clone_model(float_model), CALIBRATION, eval=HELD_OUT, mode="static")
    ours_smooth = sqnr_db(reference, _outputs(ir.to_onnx(smooth.model)))
    ours_plain = sqnr_db(reference, _outputs(ir.to_onnx(plain.model)))

    theirs = {}
    for per_channel in (False, True):  # ORT's defaults, and its per-channel weights with reduce_range
        path = tmp_path / f"ort_{per_channel}.onnx"
        quantize_static(str(float_path), str(path), _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=per_channel)
        theirs[per_channel] = round(sqnr_db(reference, _outputs(str(path))), 2)

    print(f"int8 {ours_plain:.2f} dB, int8-smooth {ours_smooth:.2f} dB, quantize_static {theirs}")
    assert ours_smooth >= ours_plain + 15  # measured: 41.3 against 18.7 dB
    assert ours_smooth >= max(theirs.values()) + 15  # measured: 16.6 and 16.1 dB
    assert smooth.report.outputs[0].sqnr_db == pytest.approx(ours_smooth, abs=0.01)
    assert smooth.report.kernels.integer_share > 0.95  # the Linears still run as integer kernels
    assert smooth.report.passes[5].name == "smooth-quant" and smooth.report.passes[5].stats["folded"] == 12


def test_smooth_quant_lifts_the_dynamic_path_past_onnxruntimes_quantize_dynamic(encoder, tmp_path):
    _, _, float_model = encoder
    float_path = tmp_path / "float.onnx"
    ir.save_model(float_model, float_path)
    reference = _outputs(str(float_path))
    reduce_range, _ = passes.Target.named("ort-cpu").reduce_range  # as ours: full-range u8s8 saturates without VNNI
    quantize_dynamic(str(float_path), str(tmp_path / "ort.onnx"), reduce_range=reduce_range)
    theirs = sqnr_db(reference, _outputs(str(tmp_path / "ort.onnx")))
    figures = {}
    for pipeline in ("dynamic", "dynamic-smooth"):
        result = qcompiler.compile(ir.clone_model(float_model), CALIBRATION, eval=HELD_OUT, pipeline=pipeline)
        assert result.report.kernels.op_counts.get("com.microsoft::DynamicQuantizeMatMul", 0) \
            + result.report.kernels.op_counts.get("com.microsoft::MatMulIntegerToFloat", 0) == 36
        figures[pipeline] = sqnr_db(reference, _outputs(ir.to_onnx(result.model)))
        embeddings = result.report.embeddings  # token and position tables, looked up in uint8
        assert embeddings["tables"] == 2 and embeddings["ratio"] > 3.8
        assert result.report.kernels.op_counts["com.microsoft::GatherBlockQuantized"] == 2
    print(f"dynamic {figures['dynamic']:.2f} dB, dynamic-smooth {figures['dynamic-smooth']:.2f} dB, "
          f"quantize_dynamic {theirs:.2f} dB")
    assert figures["dynamic"] == pytest.approx(theirs, abs=1.0)  # the same scheme as ONNX Runtime's
    assert figures["dynamic-smooth"] >= theirs + 15  # measured: 42.6 against 21.7 dB


def test_int4_weights_shrink_the_encoder_and_report_the_error(encoder):
    module, example, float_model = encoder
    result = qcompiler.compile(ir.clone_model(float_model), eval=HELD_OUT, pipeline="int4")
    found = result.report.weight_only
    assert found["weights"] == 36 and found["bits"] == 4
    assert 6.5 < found["float_bytes"] / found["quantized_bytes"] < 8.5
    reference = _outputs(ir.to_onnx(float_model))
    measured = sqnr_db(reference, _outputs(ir.to_onnx(result.model)))
    assert result.report.outputs[0].sqnr_db == pytest.approx(measured, abs=0.01)
    assert measured > 15
    kernels = result.report.kernels  # MatMulNBits at accuracy level 4 multiplies in int8; attention stays float
    assert kernels.op_counts["com.microsoft::MatMulNBits"] == 36
    assert kernels.float_nodes and all(name.endswith(("attention/MatMul", "attention/MatMul_1"))
                                       for name in kernels.float_nodes)
    assert kernels.integer_share > 0.8
    assert any(line.startswith("  weights: 36 stored int4 in blocks of 128") for line in result.report.summary())


def test_the_default_for_a_post_ln_encoder_with_massive_activations_beats_static_and_quantize_dynamic(tmp_path):
    """The Hugging Face-style stand-in (tools/encoder_standins.py): each LayerNorm's output is also
    read by the residual Add, so smooth-quant's division goes into an inserted Mul."""
    case = standins.prepare("tiny", tmp_path, 16, 8)
    calib, held_out = (_rows(path) for path in (case.calib, case.eval))
    reference = [run_onnx(str(case.model), feed)[0] for feed in held_out]
    quantize_dynamic(str(case.model), str(tmp_path / "ort.onnx"))
    theirs = sqnr_db(reference, [run_onnx(str(tmp_path / "ort.onnx"), feed)[0] for feed in held_out])
    result = qcompiler.compile(str(case.model), calib, eval=held_out)  # a transformer's default: dynamic-smooth
    assert result.report.settings["pipeline"].startswith("dynamic-smooth: normalizations feed Linears")
    ours = sqnr_db(reference, [run_onnx(ir.to_onnx(result.model), feed)[0] for feed in held_out])
    static = qcompiler.compile(str(case.model), calib, eval=held_out, mode="static")
    plain = sqnr_db(reference, [run_onnx(ir.to_onnx(static.model), feed)[0] for feed in held_out])
    print(f"dynamic-smooth {ours:.2f} dB, static int8 {plain:.2f} dB, quantize_dynamic {theirs:.2f} dB")
    assert result.report.passes[5].name == "smooth-quant" and result.report.passes[5].stats["muls_inserted"] > 0
    assert ours >= theirs + 6 and ours >= plain + 6
    linears = {row["node"]: row for row in result.report.linears}
    weighted = [row for row in linears.values() if "two activations" not in row["scheme"]]
    assert len(weighted) == 12 and all(row["scheme"] == "dynamic int8 (per-column weights)" for row in weighted)
    assert sum(row["scheme"] == "float (two activations)" for row in linears.values()) == 4  # QK^T and PV
    # the figure behind the smoothing, against the channel maxima measured here in ONNX Runtime
    value = next(v for v in result.report.smoothing["values"] if v["how"] == "Mul inserted")
    float_model = ir.load_model(case.model)
    tapped = next(v for v in float_model.graph.all_values() if v.name == value["value"])
    channel_max = np.max([np.abs(out[tapped.name][0]).reshape(-1, out[tapped.name][0].shape[-1]).max(axis=0)
                          for out in (outputs_over(ValueTap(float_model, [tapped]), [feed]) for feed in calib)], axis=0)
    assert value["outlier_ratio"] == pytest.approx(channel_max.max() / np.median(channel_max), abs=0.06)
    assert f"up to {value['outlier_ratio']:g}x their median" in linears[value["readers"][0]]["smoothed"]
    without_data = qcompiler.compile(str(case.model), eval=held_out)
    assert without_data.report.settings["pipeline"].startswith("dynamic (no calibration data to smooth with)")


def _rows(npz) -> list[dict[str, np.ndarray]]:
    with np.load(npz) as data:
        return [{k: data[k][i:i + 1] for k in data.files} for i in range(len(data[data.files[0]]))]
