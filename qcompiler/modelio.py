"""Reading and writing models by file type, for the CLI and the Python API.

`.qir` files are text IR; anything else is read as ONNX. Every write goes to a
temporary file renamed into place, so a failure never leaves a partial output.
"""

from __future__ import annotations

import os
from pathlib import Path

from qcompiler import ir
from qcompiler.ir.fileio import atomic_output


def read_model(path: str | Path, *, weights: str | Path | None = None, cleanup: bool = False,
               infer_shapes: bool = True) -> ir.Model:
    path = Path(path)
    if path.suffix == ".qir":
        return ir.parse_file(path, weights=weights)
    return ir.load_model(path, cleanup=cleanup, infer_shapes=infer_shapes)


def write_text(path: str | Path, text: str) -> None:
    with atomic_output(path) as staged:
        staged.write_text(text, encoding="utf-8")


def check_writable(path: str | Path) -> None:
    """Fail before long work when `path` cannot be written: its folder is missing or read-only."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise OSError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OSError(f"cannot write {path}: folder {folder} is not writable")
    if Path(path).is_dir():
        raise OSError(f"cannot write {path}: it is a folder")


def write_dump(model: ir.Model, path: str | Path | None, weights: str) -> str:
    """Print `model`; with `weights` an .npz path, elided constants are saved there.

    Returns the text, and writes it to `path` unless path is None. The weights file is
    written first, so a dump never names a weights file that does not exist.
    """
    if weights in ("inline", "summary"):
        return _write_if(path, ir.print_model(model, weights=weights))
    sidecar: dict = {}
    weights_path = Path(weights)
    reference = os.path.relpath(weights_path.resolve(), Path(path).resolve().parent) if path else str(weights_path)
    text = ir.print_model(model, weights=sidecar, weights_file=reference)
    ir.save_weights(sidecar, weights_path)
    return _write_if(path, text)


def _write_if(path: str | Path | None, text: str) -> str:
    if path is not None:
        write_text(path, text)
    return text
