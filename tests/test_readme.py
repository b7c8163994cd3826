"""Every example in README.md runs: the quick-start commands and the Python blocks."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import tomllib
from onnx import numpy_helper
from helpers import run_onnx

import qcompiler
from qcompiler import ir
from qcompiler.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch folder holding a copy of golden/, as a fresh checkout would."""
    shutil.copytree(ROOT / "golden", tmp_path / "golden")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_the_two_commands():
    commands = blocks("sh")
    assert len(commands) == 2
    assert commands[1].strip() == ('pip install torch==2.13.0 -e ".[torch,test,fuzz]" && python -m pytest -q '
                                   '&& python tools/fuzz.py --seconds 60 --seed 1')


def test_quick_start_commands_run(workdir):
    """The install step is skipped (the package is installed); each qc step runs for real."""
    steps = [s.strip() for s in blocks("sh")[0].split("&&")]
    assert steps[0].startswith("pip install")
    for step in steps[1:]:
        result = subprocess.run(shlex.split(step), capture_output=True, text=True, cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert "integer kernels: 100% of Conv/MatMul/Gemm MACs" in result.stdout
    with np.load(workdir / "golden/digits_mlp/inputs.npz") as inputs, \
            np.load(workdir / "golden/digits_mlp/labels.npz") as labels:
        logits = run_onnx(str(workdir / "digits_int8.onnx"), dict(inputs))[0]
        assert np.mean(logits.argmax(-1) == labels["labels"]) >= 0.95


def test_recipe_example_compiles(workdir):
    (recipe_text,) = blocks("toml")
    recipe = Recipe.from_dict(tomllib.loads(recipe_text))
    result = qcompiler.compile("golden/mlp/model.onnx", "golden/mlp/calib.npz", recipe=recipe)
    head = next(n for n in result.model.graph.nodes if n.name == "/head/Gemm")
    assert head.inputs[1].dtype == ir.DType.FLOAT  # excluded: its weight stays float
    assert "insert-observers{method=percentile,percentile=99.99}" in result.report.pipeline


def test_console_commands_run(workdir, capsys):
    """Each `$ qc ...` line of the console blocks, in order (later ones read what earlier ones wrote)."""
    from qcompiler.cli import main

    lines = [line[2:] for block in blocks("console") for line in block.splitlines() if line.startswith("$ qc ")]
    assert len(lines) == 7
    for line in lines:
        assert main(shlex.split(line)[1:]) == 0, line
    out = capsys.readouterr().out
    assert "/features/mix/mix.0/Conv (Conv): fp16" in out
    assert "auto: tolerance 1% (top-1 agreement >= 99%)" in out and "chose static" in out
    model = ir.load_model(workdir / "mlp_dynamic.onnx")
    assert any(n.op_type == "DynamicQuantizeLinear" for n in model.graph.nodes)
    saved = (workdir / "overrides.toml").read_text()
    (shown,) = re.findall(r"```\n(# precision per layer.*?)```", README, flags=re.S)
    assert saved.split("\n\n", 1)[1] == shown.split("\n\n", 1)[1]  # the section; the header's figures vary
    assert "err<sqnr=" in (workdir / "outlier_int8.qir").read_text()


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_example_runs(index, workdir):
    exec(compile(blocks("python")[index], f"README.md python block {index}", "exec"), {})


def test_python_example_writes_a_working_model(workdir):
    """Its relu6 model matches the same edit made directly on the ONNX protobuf."""
    (block,) = [b for b in blocks("python") if "relu6.onnx" in b]
    exec(compile(block, "README.md relu6 example", "exec"), {})
    proto = onnx.load(workdir / "golden/conv_relu/model.onnx")
    relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    relu.op_type = "Clip"
    relu.input.extend(["lo", "hi"])
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0), ("hi", 6))])
    with np.load(workdir / "golden/conv_relu/inputs.npz") as inputs:
        feeds = {"x": inputs["x"] * 20}  # large enough that the clip at 6 bites
    expected = run_onnx(proto, feeds)[0]
    np.testing.assert_array_equal(run_onnx(str(workdir / "relu6.onnx"), feeds)[0], expected)
    assert not np.array_equal(expected, run_onnx(str(workdir / "golden/conv_relu/model.onnx"), feeds)[0])
