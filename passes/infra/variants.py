"""VariantCache: what a pass computed from a constant, kept for the next variant of the same model.

An analysis that emits many variants of one calibrated model (sensitivity, precision
assignment) runs the same passes on copies that share the model's constant arrays
(ir.clone_model); most of what those passes derive from a constant (a weight's integer
codes, its float16 copy) comes out the same in every variant.

1. An entry is keyed by the pass's own key and the identity of the array it was
   computed from; the entry holds that array, so the identity is not reused while cached.
2. With `arrays` (fileio.MappedArrays), the arrays of a result are kept as mapped views:
   every variant's export then points at one file instead of writing them again.
3. A result is returned as it was stored, shared by every variant: the caller copies
   what it would change (arrays come back read-only where they are mapped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from qcompiler.ir.fileio import MappedArrays

T = TypeVar("T")


class VariantCache:
    """Results per (key, source array) across the variants one analysis emits."""

    def __init__(self, arrays: MappedArrays | None = None) -> None:
        self.arrays = arrays
        self.hits = 0
        self._entries: dict[tuple, tuple[np.ndarray, object]] = {}

    def get(self, key: tuple, source: np.ndarray, compute: Callable[[], T]) -> T:
        """The stored result for `key` computed from `source`, else `compute()` stored (rules 1-2)."""
        entry = self._entries.get((key, id(source)))
        if entry is not None:
            self.hits += 1
            return entry[1]
        result = compute()
        if self.arrays is not None:
            result = self._mapped(result)
        self._entries[key, id(source)] = (source, result)
        return result

    def _mapped(self, result):
        if isinstance(result, np.ndarray):
            return self.arrays.map(result)
        if isinstance(result, tuple):
            return tuple(self._mapped(item) for item in result)
        return result
