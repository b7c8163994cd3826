"""Element types of tensors.

`DType` values are the ONNX `TensorProto.DataType` codes, so import and export map
them without a table; the short names (`f32`, `i8`, `u4`, ...) are what the text IR
prints. Exotic types (bfloat16, float8, int4, ...) map to `ml_dtypes` numpy types,
the same ones `onnx.numpy_helper` produces.
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.IntEnum):
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def short_name(self) -> str:
        return _SHORT_NAMES[self]

    @classmethod
    def from_short_name(cls, name: str) -> DType:
        try:
            return _BY_SHORT_NAME[name]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}") from None

    @property
    def numpy(self) -> np.dtype:
        return _NUMPY[self]

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DType:
        dtype = np.dtype(dtype)
        if dtype.kind in "OSU":
            return cls.STRING
        try:
            return _BY_NUMPY[dtype]
        except KeyError:
            raise ValueError(f"numpy dtype {dtype} has no ONNX equivalent") from None

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> bool:
        return self in _INTEGERS

    @property
    def bitwidth(self) -> int:
        """Bits per element (strings count as 0: they have no fixed width)."""
        return _BITS[self]


_SHORT_NAMES = {
    DType.FLOAT: "f32",
    DType.UINT8: "u8",
    DType.INT8: "i8",
    DType.UINT16: "u16",
    DType.INT16: "i16",
    DType.INT32: "i32",
    DType.INT64: "i64",
    DType.STRING: "str",
    DType.BOOL: "bool",
    DType.FLOAT16: "f16",
    DType.DOUBLE: "f64",
    DType.UINT32: "u32",
    DType.UINT64: "u64",
    DType.COMPLEX64: "c64",
    DType.COMPLEX128: "c128",
    DType.BFLOAT16: "bf16",
    DType.FLOAT8E4M3FN: "f8e4m3fn",
    DType.FLOAT8E4M3FNUZ: "f8e4m3fnuz",
    DType.FLOAT8E5M2: "f8e5m2",
    DType.FLOAT8E5M2FNUZ: "f8e5m2fnuz",
    DType.UINT4: "u4",
    DType.INT4: "i4",
    DType.FLOAT4E2M1: "f4e2m1",
    DType.FLOAT8E8M0: "f8e8m0",
    DType.UINT2: "u2",
    DType.INT2: "i2",
}
_BY_SHORT_NAME = {name: dtype for dtype, name in _SHORT_NAMES.items()}

_NUMPY = {
    DType.FLOAT: np.dtype(np.float32),
    DType.UINT8: np.dtype(np.uint8),
    DType.INT8: np.dtype(np.int8),
    DType.UINT16: np.dtype(np.uint16),
    DType.INT16: np.dtype(np.int16),
    DType.INT32: np.dtype(np.int32),
    DType.INT64: np.dtype(np.int64),
    DType.STRING: np.dtype(object),
    DType.BOOL: np.dtype(np.bool_),
    DType.FLOAT16: np.dtype(np.float16),
    DType.DOUBLE: np.dtype(np.float64),
    DType.UINT32: np.dtype(np.uint32),
    DType.UINT64: np.dtype(np.uint64),
    DType.COMPLEX64: np.dtype(np.complex64),
    DType.COMPLEX128: np.dtype(np.complex128),
    DType.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    DType.FLOAT8E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    DType.FLOAT8E4M3FNUZ: np.dtype(ml_dtypes.float8_e4m3fnuz),
    DType.FLOAT8E5M2: np.dtype(ml_dtypes.float8_e5m2),
    DType.FLOAT8E5M2FNUZ: np.dtype(ml_dtypes.float8_e5m2fnuz),
    DType.UINT4: np.dtype(ml_dtypes.uint4),
    DType.INT4: np.dtype(ml_dtypes.int4),
    DType.FLOAT4E2M1: np.dtype(ml_dtypes.float4_e2m1fn),
    DType.FLOAT8E8M0: np.dtype(ml_dtypes.float8_e8m0fnu),
    DType.UINT2: np.dtype(ml_dtypes.uint2),
    DType.INT2: np.dtype(ml_dtypes.int2),
}
_BY_NUMPY = {np_dtype: dtype for dtype, np_dtype in _NUMPY.items() if dtype != DType.STRING}

_FLOATS = frozenset(
    {
        DType.FLOAT,
        DType.FLOAT16,
        DType.DOUBLE,
        DType.BFLOAT16,
        DType.FLOAT8E4M3FN,
        DType.FLOAT8E4M3FNUZ,
        DType.FLOAT8E5M2,
        DType.FLOAT8E5M2FNUZ,
        DType.FLOAT4E2M1,
        DType.FLOAT8E8M0,
    }
)
_INTEGERS = frozenset(
    {
        DType.UINT8,
        DType.INT8,
        DType.UINT16,
        DType.INT16,
        DType.INT32,
        DType.INT64,
        DType.UINT32,
        DType.UINT64,
        DType.UINT4,
        DType.INT4,
        DType.UINT2,
        DType.INT2,
    }
)
_BITS = {
    dtype: (0 if dtype == DType.STRING else 4 if dtype in (DType.UINT4, DType.INT4, DType.FLOAT4E2M1)
            else 2 if dtype in (DType.UINT2, DType.INT2) else _NUMPY[dtype].itemsize * 8)
    for dtype in DType
}
