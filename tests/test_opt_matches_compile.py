"""`qc opt --pipeline int8` with a recipe and a target writes what `qc compile` writes, byte for byte.

Every step of a compile is a pass of its pipeline (legalize-opset, freeze-weight-inputs and
apply-overrides at its head), and the target and the recipe reach passes only through the
pass context, so the two commands differ only in what compile adds around the passes:
validation and the report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompiler.cli import main

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "model.onnx").exists())
# the static pipeline (a transformer's default is dynamic-smooth), pass options, an override per op type,
# and a target whose CPU makes fold-weights keep 7-bit weights
RECIPE = """\
pipeline = "int8"

[passes.insert-observers]
method = "percentile"
percentile = 99.9

[overrides.op_type.Conv]
scheme = "per-tensor"

[overrides.op_type.Add]
observer = "minmax"
"""
TARGET = ["--target", "ort-cpu", "--cpu-flags", "avx2,fma"]


@pytest.mark.parametrize("name", CASES)
def test_opt_with_the_recipe_and_target_writes_what_compile_writes(name, tmp_path, capsys):
    case = GOLDEN / name
    calib = case / "calib.npz" if (case / "calib.npz").exists() else case / "inputs.npz"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    common = [str(case / "model.onnx"), "--calib", str(calib), "--recipe", str(recipe), *TARGET]
    assert main(["compile", *common, "-o", str(tmp_path / "compiled.onnx"), "--crash-dir", str(tmp_path)]) == 0
    assert main(["opt", *common, "--pipeline", "int8", "-o", str(tmp_path / "opt.onnx"),
                 "--crash-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    compiled, optimized = (tmp_path / "compiled.onnx").read_bytes(), (tmp_path / "opt.onnx").read_bytes()
    assert b"QuantizeLinear" in compiled
    assert optimized == compiled
