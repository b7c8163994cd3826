"""`qc opt` and `qc passes`, with a user pass loaded from a plugin file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from qcompiler import ir

PLUGIN = '''
"""A user's pass, registered exactly like the built-in ones."""
from dataclasses import dataclass

from qcompiler.passes import Pass, register_pass


@register_pass
class ReluToLeaky(Pass):
    """Replace Relu by LeakyRelu with a chosen slope."""

    name = "relu-to-leaky"

    @dataclass
    class Options:
        alpha: float = 0.01

    def run(self, model, ctx):
        for node in model.graph.nodes:
            if node.op_type == "Relu":
                node.op_type = "LeakyRelu"
                node.attributes["alpha"] = self.options.alpha
                self.stats["replaced"] += 1
        return self.stats["replaced"] > 0


@register_pass
class Crash(Pass):
    """Fail halfway through a change."""

    name = "crash-halfway"

    def run(self, model, ctx):
        next(iter(model.graph.nodes)).op_type = "Sigmoid"
        raise ValueError("halfway")
'''

MODEL = """model ir_version=10 opset{ai.onnx=21}
graph @g(%x: f32[2]) {
  %a: f32[2] = Relu(%x) name="r1"
  %b: f32[2] = Identity(%a) name="id"
  return %b
}
"""


def qc(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["qc", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def setup(tmp_path: Path) -> None:
    (tmp_path / "user_passes.py").write_text(PLUGIN)
    (tmp_path / "m.qir").write_text(MODEL)


def test_plugin_pass_shows_in_qc_passes(tmp_path):
    setup(tmp_path)
    result = qc("passes", "--plugin", "user_passes.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "relu-to-leaky: Replace Relu by LeakyRelu with a chosen slope." in lines
    assert "    alpha: float = 0.01" in lines
    assert any(line.startswith("cleanup: ") for line in lines)
    place = lines.index(next(line for line in lines if line.startswith("place-qdq: ")))
    assert lines[place + 2] == ("    [needs calibrated; gives qdq-placed; refuses weights-folded; "
                                "reads meta activations,group,precision,quantize]")


def test_plugin_pass_runs_in_a_pipeline_with_timing_and_dumps(tmp_path):
    setup(tmp_path)
    result = qc("opt", "m.qir", "--plugin", "user_passes.py", "--pipeline", "relu-to-leaky{alpha=0.2},cleanup",
                "-o", "out.qir", "--timing", "--dump-dir", "dumps", "--print-ir-after", "relu-to-leaky", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = ir.parse_file(tmp_path / "out.qir")
    (leaky,) = [n for n in out.graph.nodes if n.op_type == "LeakyRelu"]
    assert leaky.attributes["alpha"].value == float(np.float32(0.2))
    assert "// ----- IR after relu-to-leaky (1) changed=true -----" in result.stderr
    assert "LeakyRelu(%x) {alpha=0.2}" in result.stderr
    assert "replaced=1" in result.stderr and "total" in result.stderr
    assert sorted(p.name for p in (tmp_path / "dumps").iterdir()) == ["001_relu-to-leaky.qir", "002_cleanup.qir"]


def test_opt_writes_onnx(tmp_path):
    setup(tmp_path)
    result = qc("opt", "m.qir", "--pipeline", "cleanup", "-o", "out.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [n.op_type for n in ir.load_model(tmp_path / "out.onnx").graph.nodes] == ["Relu", "Identity"]


def test_crashing_pass_leaves_a_reproducer_that_replays(tmp_path):
    setup(tmp_path)
    result = qc("opt", "m.qir", "--plugin", "user_passes.py", "--pipeline", "cleanup,crash-halfway,cleanup",
                "-o", "out.qir", "--crash-dir", "crash", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr  # a crash is qcompiler's bug: exit 2
    assert "pass 'crash-halfway' (2) failed: ValueError: halfway [passes already run: cleanup]" in result.stderr
    reproducer = tmp_path / "crash" / "qc-crash-crash-halfway.qir"
    assert f"reproducer written to {Path('crash') / reproducer.name}" in result.stderr
    assert not (tmp_path / "out.qir").exists()
    replay = qc("opt", reproducer.name, "--plugin", "../user_passes.py", "--pipeline", "crash-halfway,cleanup",
                cwd=reproducer.parent)
    assert replay.returncode == 2 and "ValueError: halfway" in replay.stderr
    assert [n.op_type for n in ir.parse_file(reproducer).graph.nodes] == ["Relu", "Identity"]
    again = qc("opt", "m.qir", "--plugin", "user_passes.py", "--pipeline", "crash-halfway", "--no-reproducer",
               "--crash-dir", "crash2", cwd=tmp_path)
    assert again.returncode == 2 and "reproducer" not in again.stderr and not (tmp_path / "crash2").exists()


def test_bad_pipeline_and_plugin_errors(tmp_path):
    setup(tmp_path)
    result = qc("opt", "m.qir", "--pipeline", "cleanup,clenup", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("qc: error: pipeline column 9: unknown pass 'clenup'; did you mean 'cleanup'?")
    (tmp_path / "broken.py").write_text("raise ImportError('needs something')\n")
    result = qc("passes", "--plugin", "broken.py", cwd=tmp_path)
    assert result.returncode == 1 and "the plugin failed to load: ImportError: needs something" in result.stderr
    result = qc("passes", "--plugin", "missing.py", cwd=tmp_path)
    assert result.returncode == 1 and "no such plugin file" in result.stderr


def test_installed_package_offers_passes_through_the_entry_point_group(tmp_path):
    """A distribution declaring [qcompiler.passes] in its entry points is found without --plugin."""
    site = tmp_path / "site"
    (site / "acme_passes-1.0.dist-info").mkdir(parents=True)
    (site / "acme_passes-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-passes\nVersion: 1.0\n")
    (site / "acme_passes-1.0.dist-info" / "entry_points.txt").write_text("[qcompiler.passes]\nacme = acme_passes\n")
    (site / "acme_passes.py").write_text(PLUGIN.replace("relu-to-leaky", "acme-relu-to-leaky"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(["qc", "passes"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "acme-relu-to-leaky: Replace Relu by LeakyRelu with a chosen slope." in result.stdout.splitlines()


GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "conv_relu"


def test_opt_calibrates_with_data_from_the_command_line(tmp_path):
    result = qc("opt", GOLDEN / "model.onnx", "--pipeline", "fuse,insert-observers,calibrate",
                "--calib", GOLDEN / "inputs.npz", "-o", "calibrated.qir", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = ir.parse_file(tmp_path / "calibrated.qir")
    relu1 = next(n for n in model.graph.nodes if n.name == "relu1").outputs[0]
    with np.load(GOLDEN / "inputs.npz") as inputs:
        x = inputs["x"]
    assert relu1.meta["observer"] == "minmax" and relu1.observed_range[0] == 0.0
    assert model.graph.inputs[0].observed_range == (float(x.min()), float(x.max()))


def test_opt_names_bad_calibration_data(tmp_path):
    np.savez(tmp_path / "wrong.npz", y=np.zeros((2, 3, 16, 16), np.float32))
    result = qc("opt", GOLDEN / "model.onnx", "--pipeline", "insert-observers,calibrate",
                "--calib", "wrong.npz", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "wrong.npz" in result.stderr and "'x'" in result.stderr
