"""Golden cases are current with their generator, survive the IR round trip, and state well-formed targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_close_across_cpus, run_onnx, through_text

from qcompiler import ir

import make_golden
from golden_models import EXPECTED

ROOT = Path(__file__).resolve().parent.parent

CASES = sorted(make_golden.CASES)
TARGETS = {"min_sqnr_db", "min_top1_agreement", "max_accuracy_drop", "min_integer_flop_share", "float_accuracy"}


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
            assert_close_across_cpus(actual, outputs[key])


def test_stale_case_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(make_golden, "GOLDEN", tmp_path)
    files = make_golden.case_files("conv_relu")
    assert make_golden.stale_files("conv_relu", files) == [
        "conv_relu/model.onnx: missing", "conv_relu/inputs.npz: missing", "conv_relu/outputs.npz: missing"
    ]
    assert make_golden.main(["--write", "conv_relu"]) == 0 and make_golden.main(["conv_relu"]) == 0
    (tmp_path / "conv_relu" / "model.onnx").write_bytes(b"changed")
    assert make_golden.stale_files("conv_relu", files) == ["conv_relu/model.onnx: differs"]


def test_float_outputs_within_kernel_noise_are_current_and_beyond_it_are_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(make_golden, "GOLDEN", tmp_path)
    assert make_golden.main(["--write", "conv_relu"]) == 0
    files = make_golden.case_files("conv_relu")
    with np.load(tmp_path / "conv_relu" / "outputs.npz") as stored:
        logits = stored["logits"]
    scale = np.abs(logits).max()
    for change, stale in [(0.5 * make_golden.KERNEL_NOISE, []), (1e-3, ["conv_relu/outputs.npz: logits max abs"])]:
        shifted = logits.copy()
        shifted.flat[0] += change * scale
        np.savez(tmp_path / "conv_relu" / "outputs.npz", logits=shifted)
        found = make_golden.stale_files("conv_relu", files)
        assert [line[:len(s)] for line, s in zip(found, stale)] == stale and len(found) == len(stale)


def test_a_dump_is_current_when_only_the_last_digits_of_its_floats_moved():
    old = "  %a: f32[4] q<u8, scale=0.020337915, zp=0> range=[0.0, 5.186168] = Relu(%x)\n  const %b: i32[2] = [746, 254]"
    assert make_golden._dump_differences(old, old.replace("0.020337915", "0.020337913").replace("746", "747")) == []
    for edit in [("0.020337915", "0.0204"), ("Relu", "Sigmoid"), ("746", "749"), ("u8", "i8")]:
        assert make_golden._dump_differences(old, old.replace(*edit)) != [], edit


def test_trained_case_without_its_stored_model_asks_for_retraining(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(make_golden, "GOLDEN", tmp_path)
    assert make_golden.main(["--write", "digits_cnn"]) == 1
    assert "train it with --retrain digits_cnn" in capsys.readouterr().out
    assert not (tmp_path / "digits_cnn").exists()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_figures_are_well_formed(name):
    folder = ROOT / "golden" / name
    expected = json.loads((folder / "expected.json").read_text())
    assert TARGETS <= set(expected)
    sqnr = expected["min_sqnr_db"]
    assert all(isinstance(v, float) and v > 0 for v in (sqnr.values() if isinstance(sqnr, dict) else [sqnr]))
    for key in ("min_top1_agreement", "max_accuracy_drop", "min_integer_flop_share", "float_accuracy"):
        assert expected[key] is None or 0 <= expected[key] <= 1, key
    labelled = (folder / "labels.npz").exists()
    assert (expected["max_accuracy_drop"] is not None) == labelled == (expected["float_accuracy"] is not None)
    with np.load(folder / "outputs.npz") as outputs:
        (output,) = outputs.values()
    assert (expected["min_top1_agreement"] is not None) == (output.ndim == 2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_calibration_inputs_fit_the_model_and_stay_apart_from_the_eval_inputs(name):
    folder = ROOT / "golden" / name
    model = onnx.load(folder / "model.onnx")
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    with np.load(folder / "calib.npz") as calib, np.load(folder / "inputs.npz") as inputs:
        assert calib.files == inputs.files == [i.name for i in model.graph.input]
        for key in calib.files:
            assert calib[key].dtype == inputs[key].dtype == np.float32
            assert calib[key].shape[1:] == inputs[key].shape[1:] and len(calib[key]) >= 32
            rows = {row.tobytes() for row in calib[key]}
            assert not any(row.tobytes() in rows for row in inputs[key])


def test_digits_float_model_reaches_its_stated_accuracy():
    folder = ROOT / "golden" / "digits_cnn"
    expected = json.loads((folder / "expected.json").read_text())
    with np.load(folder / "inputs.npz") as inputs, np.load(folder / "labels.npz") as labels:
        (logits,) = run_onnx(str(folder / "model.onnx"), dict(inputs))
        truth = labels["labels"]
    accuracy = np.mean(logits.argmax(axis=1) == truth)
    assert len(truth) == len(logits) == 600
    assert accuracy >= expected["float_accuracy"] - 1e-4 and expected["float_accuracy"] >= 0.95
