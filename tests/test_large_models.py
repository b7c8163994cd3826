"""Models with external data: weights mapped, not copied, on import; streamed to a data file on
export; linked into the files ONNX Runtime reads; compiled end to end with every large-model path
forced on a small model; a missing or truncated data file named in the error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_onnx

import qcompiler
from qcompiler import ir
from qcompiler.ir import fileio, onnx_export
from qcompiler.ir.evaluate import sqnr_db
from qcompiler.ir.onnx_export import ModelFile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import bench_large  # noqa: E402

WIDTH, LAYERS = 64, 3


@pytest.fixture
def mlp(tmp_path) -> Path:
    """bench_large's model, small: weights in model.onnx.data."""
    path = tmp_path / "model.onnx"
    bench_large.write_model(path, WIDTH, LAYERS)
    return path


def numpy_forward(path: Path, x: np.ndarray) -> np.ndarray:
    """The model's output from its data file read with numpy, layer by layer as bench_large builds it."""
    data = np.fromfile(path.parent / (path.name + ".data"), np.float32)
    n = WIDTH * WIDTH + WIDTH
    for layer in range(LAYERS):
        w = data[layer * n:layer * n + WIDTH * WIDTH].reshape(WIDTH, WIDTH)
        b = data[layer * n + WIDTH * WIDTH:(layer + 1) * n]
        x = x @ w + b
        x = np.maximum(x, 0) if layer < LAYERS - 1 else x
    return x


def feeds(rows: int = 4, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((rows, WIDTH), dtype=np.float32)}


def test_import_maps_external_tensors_read_only(mlp):
    model = ir.load_model(mlp)
    weights = [v for v in model.graph.constants if v.name.endswith(".w")]
    assert len(weights) == LAYERS
    for value in weights:
        mapped, _ = fileio.mapped_region(value.const)
        assert mapped.path == (mlp.parent / "model.onnx.data").resolve()
        assert not value.const.flags.writeable
    on_disk = np.fromfile(mlp.parent / "model.onnx.data", np.float32, count=WIDTH * WIDTH).reshape(WIDTH, WIDTH)
    np.testing.assert_array_equal(weights[0].const, on_disk)


def test_save_streams_tensors_to_the_data_file(mlp, tmp_path):
    model = ir.load_model(mlp)
    out = tmp_path / "out" / "copy.onnx"
    out.parent.mkdir()
    ir.save_model(model, out, external_data=True)
    assert sorted(os.listdir(out.parent)) == ["copy.onnx", "copy.onnx.data"]
    assert out.stat().st_size < 4096, "the proto only points at the tensors"
    proto = onnx.load(out, load_external_data=False)
    external = {t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external == {f"l{i}.w" for i in range(LAYERS)}, "tensors from 1 KB on"
    x = feeds()
    np.testing.assert_allclose(run_onnx(str(out), x)[0], numpy_forward(mlp, x["x"]), rtol=1e-4, atol=1e-4)


def test_model_file_links_the_mapped_weights(mlp):
    model = ir.load_model(mlp)
    with ModelFile(model) as exported:
        linked = [f for f in exported.path.parent.iterdir() if f.name != "model.onnx"]
        assert len(linked) == 1 and linked[0].stat().st_ino == (mlp.parent / "model.onnx.data").stat().st_ino
        x = feeds()
        np.testing.assert_allclose(run_onnx(str(exported.path), x)[0], numpy_forward(mlp, x["x"]),
                                   rtol=1e-4, atol=1e-4)
        folder = exported.path.parent
    assert not folder.exists()


def test_compile_with_large_model_paths(mlp, tmp_path, monkeypatch):
    """Every model counts as large: ModelFiles write external data, sessions are lean, output is external."""
    monkeypatch.setattr(onnx_export, "LARGE_MODEL_BYTES", 1024)
    calib, held_out = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, **feeds(8, seed=2))
    np.savez(held_out, **feeds(16, seed=3))
    result = qcompiler.compile(mlp, calib, eval=held_out)
    out = tmp_path / "q.onnx"
    result.save(out)
    assert (tmp_path / "q.onnx.data").stat().st_size >= WIDTH * WIDTH * LAYERS  # the int8 weights
    x = dict(np.load(held_out))
    reference = numpy_forward(mlp, x["x"]).astype(np.float64)
    quantized = run_onnx(str(out), x)[0]
    sqnr = sqnr_db(reference, quantized)
    assert sqnr > 25
    assert result.report.outputs[0].sqnr_db == pytest.approx(sqnr, abs=0.5)
    assert result.report.size_bytes["quantized"] < result.report.size_bytes["float"] / 2


def test_missing_data_file_is_named(mlp):
    data = mlp.parent / "model.onnx.data"
    data.unlink()
    with pytest.raises(ir.ModelLoadError, match=f"{data}.*does not exist"):
        ir.load_model(mlp)


def test_truncated_data_file_is_named(mlp):
    data = mlp.parent / "model.onnx.data"
    os.truncate(data, data.stat().st_size - 100)
    with pytest.raises(ir.ModelLoadError, match=f"'l2.b' needs bytes .* of {data}, which has only .*truncated"):
        ir.load_model(mlp)


def test_failed_export_leaves_the_old_pair(mlp, tmp_path, monkeypatch):
    """The data file is in place when the model's rename fails: the old pair comes back, no new file stays."""
    model = ir.load_model(mlp)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    (out.parent / "m.onnx.data").write_bytes(b"old data")
    out.write_bytes(b"old model")
    replace, failed = os.replace, []

    def failing_replace(source, target):
        if Path(target) == out and not failed:  # the new model's rename, not the old one's way back
            failed.append(source)
            raise OSError("disk full")
        replace(source, target)

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        ir.save_model(model, out, external_data=True)
    assert out.read_bytes() == b"old model" and (out.parent / "m.onnx.data").read_bytes() == b"old data"
    assert sorted(os.listdir(out.parent)) == ["m.onnx", "m.onnx.data"]


_MEMORY_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tools!r})
import bench_large
from qcompiler import ir

def hwm():
    return bench_large._status("VmHWM")

path = Path({folder!r}) / "model.onnx"
size = bench_large.write_model(path, 2048, 16)
base = hwm()
model = ir.load_model(path)
loaded = hwm()
ir.save_model(model, Path({folder!r}) / "copy.onnx", external_data=True)
print(size, loaded - base, hwm() - base)
"""


def test_load_and_save_do_not_hold_the_weights(tmp_path):
    """A 268 MB model in a fresh process: import maps it (RSS flat); export streams it (RSS grows far less than it)."""
    code = _MEMORY_CHILD.format(tools=str(ROOT / "tools"), folder=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    size, load_growth, save_growth = map(int, out.split())
    assert size > 250e6
    assert load_growth < 30e6
    assert save_growth < 0.25 * size
    assert (tmp_path / "copy.onnx.data").stat().st_size >= size
