"""Types of values: tensors with (possibly symbolic) shapes, and the ONNX container types.

A dimension is an `int` (static), a `str` (symbolic, e.g. ``"batch"``) or `None`
(unknown). A shape of `None` means the rank itself is unknown; ``()`` is a scalar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .dtypes import DType

Dim = Union[int, str, None]
Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: Shape | None = None

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True)
class SparseTensorType:
    dtype: DType
    shape: Shape | None = None


@dataclass(frozen=True)
class SequenceType:
    elem: Type


@dataclass(frozen=True)
class OptionalType:
    elem: Type


@dataclass(frozen=True)
class MapType:
    key: DType
    value: Type


Type = Union[TensorType, SparseTensorType, SequenceType, OptionalType, MapType]
