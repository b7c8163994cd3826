"""A built wheel installs qcompiler, qcompiler.ir and qcompiler.passes, with their grammars."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import qcompiler, qcompiler.ir, qcompiler.passes
from qcompiler import ir
m = ir.parse_model('model ir_version=8 opset{ai.onnx=17}\\ngraph @g(%x: f32[1]) {\\n  return %x\\n}\\n')
assert str(qcompiler.passes.parse_pipeline('int8')) == 'int8'  # the pipeline grammar ships too
print(qcompiler.ir.__file__)
"""


def test_editable_install_imports_all_packages():
    import qcompiler.ir
    import qcompiler.passes

    assert Path(qcompiler.ir.__file__).parent == ROOT / "ir"
    assert Path(qcompiler.passes.__file__).parent == ROOT / "passes"


def test_wheel_installs_all_packages(tmp_path):
    source = tmp_path / "source"  # build from a copy: setuptools writes build/ beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", source],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("qcompiler-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
                   check=True, capture_output=True)
    assert (target / "qcompiler" / "ir" / "qir.lark").is_file()
    assert (target / "qcompiler" / "passes" / "infra" / "pipeline.lark").is_file()
    assert not (target / "ir").exists(), "nothing generic named 'ir' lands in site-packages"
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(target)


def test_loading_a_model_with_symbolic_dims_does_not_import_torch():
    """ONNX Runtime's symbolic shape inference is loaded from its file, not through
    `onnxruntime.tools`, whose package import pulls in torch (seconds, hundreds of MB)."""
    code = ("import sys; from qcompiler import ir; "
            "m = ir.load_model('golden/digits_cnn/model.onnx'); "
            "assert m.graph.inputs[0].shape[0] == 'batch'; "
            "from qcompiler.ir.onnx_import import _symbolic_shape_inference as f; assert f() is not None; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
