"""The weights file (.npz) beside a text dump whose large constants are elided.

Entries hold raw bytes (uint8), keyed as the dump's `blob("key")` names them; the
dump's own type line says how to read them. Raw bytes keep every ONNX dtype (int4,
bfloat16, float8, ...) without numpy pickling.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from .errors import IRError
from .fileio import atomic_output


def save_weights(weights: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write atomically: a failed save leaves no partial file.

    Keys are %-escaped in the archive: any text (NUL, lone surrogates, "file") stays a key.
    """
    with atomic_output(Path(path)) as staged, zipfile.ZipFile(staged, "w") as archive:
        for key, array in weights.items():
            raw = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)
            with archive.open(quote(key, safe="", errors="surrogatepass") + ".npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, raw, allow_pickle=False)


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {unquote(key, errors="surrogatepass"): npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, TypeError) as err:  # TypeError: a header numpy cannot sort
        raise IRError(f"{path}: cannot read the weights file: {err}") from None
