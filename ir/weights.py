"""The weights file (.npz) beside a text dump whose large constants are elided.

Entries hold raw bytes (uint8), keyed as the dump's `blob("key")` names them; the
dump's own type line says how to read them. Raw bytes keep every ONNX dtype (int4,
bfloat16, float8, ...) without numpy pickling.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import IRError
from .fileio import atomic_output


def save_weights(weights: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write atomically: a failed save leaves no partial file."""
    path = Path(path)
    raw = {key: np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=np.uint8) for key, a in weights.items()}
    with atomic_output(path) as staged, open(staged, "wb") as f:
        np.savez(f, **raw)


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise IRError(f"{path}: cannot read the weights file: {err}") from None
