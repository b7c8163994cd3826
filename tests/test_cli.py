"""The `qc` command line: dump/export, and one clear line for each kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_same_outputs, run_onnx
from onnx import TensorProto, helper

from qcompiler.cli import main

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"


def qc(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def save(tmp_path: Path, nodes, name: str = "bad.onnx", opsets=(("", 17),)) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    proto = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]),
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
    )
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


def test_version_and_help_from_the_installed_command():
    version = subprocess.run(["qc", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("qc ")
    for command in ([], ["dump"], ["export"]):
        result = subprocess.run(["qc", *command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: qc" in result.stdout


def test_dump_then_export_reproduces_the_model(tmp_path, capsys):
    code, _, err = qc(capsys, "dump", LIGHT, "-o", tmp_path / "m.qir", "--weights", tmp_path / "m.npz")
    assert code == 0, err
    text = (tmp_path / "m.qir").read_text()
    assert text.startswith('weights "m.npz"\nmodel ir_version=3 opset{ai.onnx=9}')
    assert "= Conv(%data_0, %conv1_w_0, %conv1_b_0)" in text
    code, _, err = qc(capsys, "export", tmp_path / "m.qir", "-o", tmp_path / "m.onnx")
    assert code == 0, err
    feeds = {"data_0": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    assert_same_outputs(run_onnx(str(LIGHT), feeds), run_onnx(str(tmp_path / "m.onnx"), feeds))


def test_dump_to_stdout_inline_and_summary(capsys):
    code, summary, _ = qc(capsys, "dump", LIGHT)
    assert code == 0 and "blob(" not in summary.split("graph", 1)[0]
    code, inline, _ = qc(capsys, "dump", LIGHT, "--weights", "inline")
    assert code == 0 and "blob(" not in inline and len(inline) > len(summary)


def test_a_dump_written_to_a_file_keeps_its_weights_beside_it_and_parses_back(tmp_path, capsys):
    code, _, err = qc(capsys, "dump", LIGHT, "-o", tmp_path / "m.qir")
    assert code == 0, err
    assert (tmp_path / "m.qir").read_text().startswith('weights "m.npz"\n') and (tmp_path / "m.npz").exists()
    code, _, err = qc(capsys, "export", tmp_path / "m.qir", "-o", tmp_path / "m.onnx")
    assert code == 0, err
    feeds = {"data_0": np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    assert_same_outputs(run_onnx(str(LIGHT), feeds), run_onnx(str(tmp_path / "m.onnx"), feeds))


def test_export_of_a_summary_dump_says_weights_are_missing(tmp_path, capsys):
    qc(capsys, "dump", LIGHT, "-o", tmp_path / "m.qir", "--weights", "summary")
    code, _, err = qc(capsys, "export", tmp_path / "m.qir", "-o", tmp_path / "m.onnx")
    assert code == 1 and "elided" in err and "weights file" in err
    assert not (tmp_path / "m.onnx").exists()


def bad_onnx_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(LIGHT.read_bytes()[:3000])
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n")
    return {
        "truncated": (truncated, "not an ONNX model, or truncated"),
        "not onnx": (text, "not an ONNX model"),
        "missing": (tmp_path / "nope.onnx", "no such file"),
        "cycle": (
            save(tmp_path, [helper.make_node("Relu", ["b"], ["a"], name="A"),
                            helper.make_node("Neg", ["a"], ["b"], name="B"),
                            helper.make_node("Identity", ["x"], ["y"])], "cycle.onnx"),
            "cycle through nodes 'A' (Relu), 'B' (Neg)",
        ),
        "dangling": (
            save(tmp_path, [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")], "dangling.onnx"),
            "node 'add' reads 'ghost', which nothing defines",
        ),
        "undeclared domain": (
            save(tmp_path, [helper.make_node("Frob", ["x"], ["y"], domain="acme.ops", name="frob")], "domain.onnx"),
            "'frob' (Frob) uses domain 'acme.ops', which the model does not import",
        ),
        "unknown op": (
            save(tmp_path, [helper.make_node("Relux", ["x"], ["y"], name="r")], "op.onnx"),
            "Relux is not an operator of domain 'ai.onnx'",
        ),
    }


@pytest.mark.parametrize(
    "case", ["truncated", "not onnx", "missing", "cycle", "dangling", "undeclared domain", "unknown op"]
)
def test_bad_onnx_gives_one_line_and_no_output(case, tmp_path, capsys):
    path, message = bad_onnx_cases(tmp_path)[case]
    out_file = tmp_path / "out.qir"
    code, out, err = qc(capsys, "dump", path, "-o", out_file)
    assert code == 1 and out == ""
    assert err.startswith(f"qc: error: {path}") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_custom_domain_that_is_imported_is_fine(tmp_path, capsys):
    path = save(tmp_path, [helper.make_node("Frob", ["x"], ["y"], domain="acme.ops")], "ok.onnx",
                opsets=(("", 17), ("acme.ops", 1)))
    code, out, _ = qc(capsys, "dump", path)
    assert code == 0 and "acme.ops::Frob(%x)" in out


GOOD_QIR = """model ir_version=8 opset{ai.onnx=17}
graph @g(%x: f32[2]) {
  %y: f32[2] = Relu(%x)
  return %y
}
"""


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD_QIR.replace("Relu(%x)", "Relu(%x,)"), "m.qir:3:24: unexpected ')'; expected one of: %value, 'none'"),
        (GOOD_QIR.replace("Relu(%x)", "Relu(%z)"), "m.qir:3:21: %z is not defined"),
        (GOOD_QIR.replace("f32[2] =", "f33[2] ="), "m.qir:3:7: unknown element type 'f33'"),
        (GOOD_QIR.replace("return %y", "return %y\n  %w: f32[2] = Neg(%x)"), "m.qir:5:3: unexpected '%w'"),
        (GOOD_QIR.replace("%y: f32[2] = Relu", "%x: f32[2] = Relu"), "m.qir:3:3: %x is already defined in this graph"),
        (GOOD_QIR[:-3], "m.qir:4:10: unexpected end of input; expected one of: ',', '}'"),
    ],
    ids=["syntax", "undefined", "dtype", "after-return", "redefined", "truncated"],
)
def test_bad_qir_gives_line_column_and_no_output(text, message, tmp_path, capsys):
    (tmp_path / "m.qir").write_text(text)
    code, _, err = qc(capsys, "export", tmp_path / "m.qir", "-o", tmp_path / "m.onnx")
    assert code == 1 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "m.qir"]


def test_weights_file_that_does_not_match_is_refused(tmp_path, capsys):
    qc(capsys, "dump", LIGHT, "-o", tmp_path / "a.qir", "--weights", tmp_path / "a.npz")
    other = LIGHT.with_name("light_vgg19.onnx")
    qc(capsys, "dump", other, "-o", tmp_path / "b.qir", "--weights", tmp_path / "b.npz")
    code, _, err = qc(capsys, "export", tmp_path / "a.qir", "--weights", tmp_path / "b.npz", "-o", tmp_path / "x.onnx")
    assert code == 1 and "a.qir:" in err and "weights file has no entry" in err
    assert not (tmp_path / "x.onnx").exists()


def test_usage_errors_exit_2():
    result = subprocess.run([sys.executable, "-m", "qcompiler.cli", "dump"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: qc dump" in result.stderr


CRASHING_PASS = '''
from qcompiler.passes import Pass, register_pass


@register_pass
class Explode(Pass):
    """Divides by zero: a bug inside a pass."""

    name = "explode"

    def run(self, model, ctx):
        return 1 / 0
'''


def test_a_pass_that_crashes_gives_one_line_exit_2_and_a_reproducer_that_replays_it(tmp_path, capsys):
    plugin = tmp_path / "explode.py"
    plugin.write_text(CRASHING_PASS)
    golden = Path(__file__).resolve().parent.parent / "golden" / "mlp"
    code = main(["compile", str(golden / "model.onnx"), "--calib", str(golden / "calib.npz"), "-o",
                 str(tmp_path / "out.onnx"), "--plugin", str(plugin), "--pipeline", "canonicalize,explode,cleanup",
                 "--crash-dir", str(tmp_path / "crash")])
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("qc: running")]
    reproducer = tmp_path / "crash" / "qc-crash-explode.qir"
    assert code == 2 and not (tmp_path / "out.onnx").exists()
    assert errors == [f"qc compile: internal error: pass 'explode' (2) failed: ZeroDivisionError: division by zero "
                      f"[passes already run: canonicalize]; reproducer written to {reproducer}"]
    assert reproducer.read_text().splitlines()[1] == '// replay: qc opt qc-crash-explode.qir --pipeline "explode,cleanup"'
    assert main(["opt", str(reproducer), "--plugin", str(plugin), "--pipeline", "explode,cleanup",
                 "--crash-dir", str(tmp_path / "again"), "-o", str(tmp_path / "replayed.qir")]) == 2
    assert "ZeroDivisionError: division by zero" in capsys.readouterr().err


def test_a_bug_outside_any_pass_names_the_function_it_was_raised_in(tmp_path, capsys, monkeypatch):
    from qcompiler import cli

    def broken(*args, **kwargs):
        raise KeyError("latency")

    monkeypatch.setattr(cli, "file_bytes", broken)
    model = tmp_path / "m.onnx"
    model.write_bytes((Path(__file__).resolve().parent.parent / "golden" / "mlp" / "model.onnx").read_bytes())
    assert main(["bench", str(model), str(model)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("qc bench: internal error in _bench (qcompiler/cli.py:") and line.endswith(": KeyError: 'latency'")
