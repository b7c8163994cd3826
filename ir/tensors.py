"""Constant tensor data: numpy arrays, and elided stand-ins for arrays a dump left out.

A text dump may summarize a large constant (shape, dtype, min/max, digest) instead of
printing it. Parsing such a dump without its weights file gives an `ElidedTensor`:
the graph still prints identically, but exporting it to ONNX needs the real data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .dtypes import DType

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ElidedTensor:
    """A constant whose data lives elsewhere (a weights file), known by its summary."""

    dtype: DType
    shape: Shape
    key: str
    digest: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, eq=False)
class SparseTensor:
    """ONNX sparse tensor: `values` at `indices` ([NNZ] linear or [NNZ, rank]) of `dims`."""

    values: np.ndarray
    indices: np.ndarray
    dims: Shape


def digest(array: np.ndarray) -> str:
    """A short content hash that ties a summarized constant to its weights-file entry."""
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}{array.shape}".encode())
    if array.dtype == object:
        for item in array.reshape(-1):
            h.update(len(item).to_bytes(8, "little") + bytes(item))
    else:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def value_range(array: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of a numeric array with at least one element, else None."""
    if array.size == 0 or array.dtype == object or array.dtype.kind == "c":
        return None
    as_float = array.astype(np.float64) if array.dtype.kind not in "fiub" else array
    if as_float.dtype.kind == "b":
        as_float = as_float.astype(np.uint8)
    return float(np.min(as_float)), float(np.max(as_float))
