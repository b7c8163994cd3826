"""`qc compile`: the report on stdout and in JSON, and clean failures that leave no output behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_onnx

from qcompiler.cli import main

DIGITS = Path(__file__).resolve().parent.parent / "golden" / "digits_cnn"


def qc(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_writes_model_and_report(tmp_path, capsys):
    output, report = tmp_path / "digits_int8.onnx", tmp_path / "report.json"
    code, out, err = qc(capsys, "compile", DIGITS / "model.onnx", "--calib", DIGITS / "calib.npz",
                        "--eval", DIGITS / "inputs.npz", "-o", output, "--report", report, "--timing")
    assert code == 0, err
    data = json.loads(report.read_text())
    sqnr = data["outputs"][0]["sqnr_db"]
    assert f"SQNR {sqnr:.1f} dB" in out and "integer kernels: 100%" in out and f"wrote {output}" in out
    assert "calibrate" in err and "seconds" in err  # the timing table
    with np.load(DIGITS / "inputs.npz") as inputs, np.load(DIGITS / "labels.npz") as labels:
        logits = run_onnx(str(output), dict(inputs))[0]
        accuracy = np.mean(logits.argmax(-1) == labels["labels"])
    assert accuracy >= 0.96
    assert data["kernels"]["integer_share"] == 1.0 and data["qdq_nodes"]["QuantizeLinear"] > 0


def test_dump_dir_keeps_the_ir_after_each_pass(tmp_path, capsys):
    code, _, err = qc(capsys, "compile", DIGITS / "model.onnx", "--calib", DIGITS / "calib.npz",
                      "-o", tmp_path / "q.onnx", "--dump-dir", tmp_path / "dumps")
    assert code == 0, err
    dumps = sorted(p.name for p in (tmp_path / "dumps").glob("*.qir"))
    assert dumps[0].startswith("001_legalize-opset") and dumps[-1].startswith("011_cleanup")
    assert "QuantizeLinear" in (tmp_path / "dumps" / dumps[-1]).read_text()


@pytest.mark.parametrize("case", ["calibration", "folder", "quantized", "recipe", "pipeline"])
def test_bad_input_fails_with_one_line_and_no_output(tmp_path, capsys, case):
    output = tmp_path / "out.onnx"
    model, calib, extra = DIGITS / "model.onnx", DIGITS / "calib.npz", []
    if case == "calibration":
        calib = tmp_path / "wrong.npz"
        np.savez(calib, x=np.zeros((4, 3, 8, 8), np.float32))
        expected = "input 'x': dim 1 is 3, the model expects 1"
    elif case == "folder":
        output = tmp_path / "missing" / "out.onnx"
        expected = "does not exist"
    elif case == "quantized":
        assert qc(capsys, "compile", model, "--calib", calib, "-o", tmp_path / "q.onnx")[0] == 0
        model = tmp_path / "q.onnx"
        expected = "already quantized"
    elif case == "recipe":
        recipe = tmp_path / "recipe.toml"
        recipe.write_text("[passes.fold-weights]\nper_chanel = true\n")
        extra = ["--recipe", recipe]
        expected = "has no option 'per_chanel'"
    else:
        extra = ["--pipeline", "canonicalize,clenup"]
        expected = "unknown pass 'clenup'"
    code, out, err = qc(capsys, "compile", model, "--calib", calib, "-o", output, *extra)
    assert code == 1 and err.startswith("qc: error: ") and expected in err, err
    assert "Traceback" not in err and not output.exists()
