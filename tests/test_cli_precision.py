"""`qc sensitivity` and `qc compile --min-sqnr/--save-overrides` on the outlier golden case."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
from helpers import run_onnx
from test_cli_compile import qc

from qcompiler.ir.evaluate import sqnr_db

OUTLIER = Path(__file__).resolve().parent.parent / "golden" / "outlier_convnet"
MIX = "/features/mix/mix.0/Conv"
DATA = ("--calib", OUTLIER / "calib.npz", "--eval", OUTLIER / "inputs.npz")


def sqnr(model: Path) -> float:
    with np.load(OUTLIER / "inputs.npz") as inputs, np.load(OUTLIER / "outputs.npz") as outputs:
        reference = outputs["logits"].astype(np.float64)
        actual = run_onnx(str(model), dict(inputs))[0]
    return sqnr_db(reference, actual)


def test_sensitivity_prints_the_table_writes_json_and_a_plot_and_reuses_its_cache(tmp_path, capsys):
    cache, table, png = tmp_path / "cache.json", tmp_path / "table.json", tmp_path / "table.png"
    code, out, _ = qc(capsys, "sensitivity", OUTLIER / "model.onnx", *DATA, "--cache", cache, "--json", table,
                      "--plot", png)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("all int8: SQNR -") and lines[2].split()[:2] == ["1", MIX]
    rows = json.loads(table.read_text())["rows"]
    assert rows[0]["unit"] == MIX and rows[0]["gain_db"] > 25
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, again, _ = qc(capsys, "sensitivity", OUTLIER / "model.onnx", *DATA, "--cache", cache, "--top", "1")
    assert code == 0 and "note: read from the cache: no variant was run" in again
    assert again.splitlines()[2] == lines[2] and len([l for l in again.splitlines() if l[:4].strip().isdigit()]) == 1


def test_min_sqnr_compiles_mixed_and_the_saved_overrides_pin_the_same_model(tmp_path, capsys):
    mixed, overrides, pinned = tmp_path / "mixed.onnx", tmp_path / "overrides.toml", tmp_path / "pinned.onnx"
    code, out, _ = qc(capsys, "compile", OUTLIER / "model.onnx", *DATA, "--min-sqnr", "25", "-o", mixed,
                      "--save-overrides", overrides)
    assert code == 0 and f"    {MIX} (Conv): fp16" in out
    saved = tomllib.loads(overrides.read_text())
    assert saved == {"overrides": {"node": {MIX: {"precision": "fp16"}}}}
    assert overrides.read_text().startswith("# precision per layer chosen for")
    code, out, _ = qc(capsys, "compile", OUTLIER / "model.onnx", *DATA, "--recipe", overrides, "-o", pinned)
    assert code == 0 and "precision:" not in out  # the int8 pipeline: nothing decided, the recipe pinned it
    assert sqnr(pinned) == sqnr(mixed) > 25


def test_an_impossible_budget_exits_1_in_one_line_and_writes_nothing(tmp_path, capsys):
    output, overrides = tmp_path / "out.onnx", tmp_path / "overrides.toml"
    code, out, err = qc(capsys, "compile", OUTLIER / "model.onnx", *DATA, "--min-sqnr", "90", "-o", output,
                        "--save-overrides", overrides)
    errors = [line for line in err.splitlines() if line.startswith("qc: error:")]
    assert code == 1 and len(errors) == 1 and "failed: assign-precision cannot meet output SQNR >= 90 dB" in errors[0]
    assert "Traceback" not in err and not output.exists() and not overrides.exists()
    assert list(tmp_path.iterdir()) == []
