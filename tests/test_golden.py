"""Golden cases are current with their generator and survive the IR round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_onnx, through_text

from qcompiler import ir

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_golden  # noqa: E402

CASES = sorted(make_golden.CASES)


@pytest.mark.parametrize("name", CASES)
def test_golden_files_are_current(name):
    assert make_golden.stale_files(name, make_golden.case_files(name)) == []


@pytest.mark.parametrize("name", CASES)
def test_golden_model_round_trips_to_its_outputs(name):
    folder = ROOT / "golden" / name
    _, model = through_text(ir.load_model(folder / "model.onnx"))
    with np.load(folder / "inputs.npz") as inputs, np.load(folder / "outputs.npz") as outputs:
        got = run_onnx(ir.to_onnx(model), dict(inputs))
        for actual, key in zip(got, outputs.files):
            np.testing.assert_allclose(actual, outputs[key], rtol=1e-5, atol=1e-6)


def test_stale_case_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(make_golden, "GOLDEN", tmp_path)
    files = make_golden.case_files("conv_relu")
    assert make_golden.stale_files("conv_relu", files) == [
        "conv_relu/model.onnx: missing", "conv_relu/inputs.npz: missing", "conv_relu/outputs.npz: missing"
    ]
    assert make_golden.main(["--write"]) == 0 and make_golden.main([]) == 0
    (tmp_path / "conv_relu" / "model.onnx").write_bytes(b"changed")
    assert make_golden.stale_files("conv_relu", files) == ["conv_relu/model.onnx: differs"]
