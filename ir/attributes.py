"""Typed node attributes.

The kind is kept explicitly (not guessed from the Python value) because ONNX tells
`1` from `1.0` and an empty INTS from an empty FLOATS, and a round trip must too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np


class AttrKind(enum.IntEnum):
    """ONNX `AttributeProto.AttributeType` codes."""

    FLOAT = 1
    INT = 2
    STRING = 3
    TENSOR = 4
    GRAPH = 5
    FLOATS = 6
    INTS = 7
    STRINGS = 8
    TENSORS = 9
    GRAPHS = 10
    SPARSE_TENSOR = 11
    SPARSE_TENSORS = 12
    TYPE_PROTO = 13
    TYPE_PROTOS = 14

    @property
    def is_list(self) -> bool:
        return self in _LIST_KINDS

    @property
    def element(self) -> AttrKind:
        """The kind of one element of a list kind (FLOATS -> FLOAT)."""
        return _ELEMENT.get(self, self)

    @property
    def list_of(self) -> AttrKind:
        """The list kind holding elements of this kind (FLOAT -> FLOATS)."""
        return _LIST_OF[self]


_ELEMENT = {
    AttrKind.FLOATS: AttrKind.FLOAT,
    AttrKind.INTS: AttrKind.INT,
    AttrKind.STRINGS: AttrKind.STRING,
    AttrKind.TENSORS: AttrKind.TENSOR,
    AttrKind.GRAPHS: AttrKind.GRAPH,
    AttrKind.SPARSE_TENSORS: AttrKind.SPARSE_TENSOR,
    AttrKind.TYPE_PROTOS: AttrKind.TYPE_PROTO,
}
_LIST_KINDS = frozenset(_ELEMENT)
_LIST_OF = {element: lst for lst, element in _ELEMENT.items()}

@dataclass(eq=False)
class Attr:
    """An attribute value with its ONNX kind.

    Python values per kind: FLOAT float, INT int, STRING str (bytes that are not UTF-8
    survive through surrogate escapes), TENSOR numpy array or ElidedTensor, GRAPH Graph,
    SPARSE_TENSOR SparseTensor, TYPE_PROTO a Type; list kinds hold tuples of those.
    """

    kind: AttrKind
    value: Any

    def __post_init__(self) -> None:
        if self.kind.is_list:
            self.value = tuple(self.value)
        if self.kind.element == AttrKind.FLOAT:
            self.value = _as_float32(self.value, self.kind.is_list)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attr) or self.kind != other.kind:
            return NotImplemented if not isinstance(other, Attr) else False
        if self.kind in (AttrKind.TENSOR, AttrKind.TENSORS):
            mine = self.value if self.kind.is_list else (self.value,)
            theirs = other.value if other.kind.is_list else (other.value,)
            return len(mine) == len(theirs) and all(map(_same_tensor, mine, theirs))
        return self.value == other.value


def _same_tensor(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


def _as_float32(value: Any, is_list: bool) -> Any:
    """ONNX stores attribute floats as float32; keep exactly the value it will store."""
    if is_list:
        return tuple(float(np.float32(v)) for v in value)
    return float(np.float32(value))

