"""Quantization parameters carried on IR values, and the math that makes and applies them.

Once a pass decides how a value is quantized it records it here; only QDQ placement
and export turn these records into QuantizeLinear/DequantizeLinear nodes. `quantize`
and `dequantize` are numpy versions of those two ONNX ops, so passes can measure the
error a choice of parameters causes without building a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .dtypes import DType

_INT_QUANT_DTYPES = frozenset(
    {DType.INT8, DType.UINT8, DType.INT16, DType.UINT16, DType.INT4, DType.UINT4, DType.INT32}
)
QUANT_DTYPES = _INT_QUANT_DTYPES | {
    DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ
}
# Symmetric ranges drop the most negative code so that +-absmax map to +-qmax; ONNX
# Runtime's quantizer does this for int8 and int16 only (ONNX_INT_TYPE_SYMMETRIC_RANGE)
# and keeps [-8, 7] for int4. We follow it, and treat int32 like int8 and int16.
_RESTRICTED_WHEN_SYMMETRIC = frozenset({DType.INT8, DType.INT16, DType.INT32})


def dtype_range(dtype: DType) -> tuple[int, int]:
    """(qmin, qmax): the integers a quantized dtype holds."""
    if dtype not in _INT_QUANT_DTYPES:
        raise ValueError(f"{dtype.short_name} has no integer quantization range")
    info = ml_dtypes.iinfo(dtype.numpy)
    return int(info.min), int(info.max)


@dataclass(eq=False)
class QuantParams:
    """Affine quantization: real = (q - zero_point) * scale.

    Per tensor when `axis` is None (scale and zero_point are scalars); per channel along
    `axis` (1-D arrays); blocked when `block_size` is also set (arrays shaped like the
    tensor with `axis` divided into blocks).
    """

    dtype: DType
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in QUANT_DTYPES:
            raise ValueError(f"{self.dtype.short_name} is not a quantized dtype")
        self.scale = np.asarray(self.scale, dtype=np.float32)
        self.zero_point = np.asarray(self.zero_point, dtype=self.dtype.numpy)
        if self.scale.shape != self.zero_point.shape:
            raise ValueError(
                f"scale shape {self.scale.shape} and zero point shape {self.zero_point.shape} differ"
            )
        if self.axis is None and self.scale.ndim != 0:
            raise ValueError("per-tensor parameters need a scalar scale; give an axis for per-channel")
        if self.block_size is not None and self.axis is None:
            raise ValueError("blocked quantization needs an axis")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and self.axis == other.axis
            and self.block_size == other.block_size
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    @classmethod
    def from_range(cls, lo, hi, dtype: DType, *, symmetric: bool, axis: int | None = None) -> QuantParams:
        """Parameters that cover [lo, hi] widened to include 0 (so 0 is exact).

        The formulas are ONNX Runtime's (`quant_utils.compute_scale_zp`), so a range gives
        the same parameters here as there: bounds are taken as float32, the scale is
        computed in float64 and stored as float32, zero points round half to even.
        Asymmetric: scale = (hi - lo) / (qmax - qmin), zero point = round(qmin - lo / scale).
        Symmetric: the range becomes [-m, m] with m = max(|lo|, |hi|), and int8/int16/int32
        use [-qmax, qmax] (int8: -127..127), so scale = m / ((qmax - qmin) / 2) and the zero
        point is the midpoint: 0 for signed types, 128 for uint8, 8 for uint4, 32768 for uint16.
        A range too small for a float32 scale (all zeros) gets scale 1.0 as in ORT; its zero
        point is 0, except symmetric unsigned types keep the midpoint where ORT writes 0,
        because per-channel symmetric kernels need one zero point for all channels.
        `lo`, `hi` are scalars, or 1-D arrays (one entry per channel) with `axis`.
        """
        lo = np.asarray(lo, dtype=np.float32)
        hi = np.asarray(hi, dtype=np.float32)
        lo, hi = np.broadcast_arrays(lo, hi)
        if lo.ndim != (0 if axis is None else 1):
            raise ValueError("per-tensor ranges are scalars; per-channel ranges are 1-D arrays with an axis")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError(f"quantization range is not finite: lo={lo}, hi={hi}")
        if (lo > hi).any():
            raise ValueError(f"quantization range is empty: lo={lo} > hi={hi}")
        qmin, qmax = dtype_range(dtype)
        lo, hi = np.minimum(lo, 0).astype(np.float64), np.maximum(hi, 0).astype(np.float64)
        if symmetric:
            if dtype in _RESTRICTED_WHEN_SYMMETRIC:
                qmin = -qmax
            hi = np.maximum(-lo, hi)
            lo = -hi
        scale = (hi - lo) / (qmax - qmin)
        tiny = scale < np.finfo(np.float32).tiny
        safe_scale = np.where(tiny, 1.0, scale)
        if symmetric:
            zero_point = np.full(scale.shape, np.rint((qmin + qmax) / 2))
        else:
            zero_point = np.where(tiny, 0.0, np.clip(np.rint(qmin - lo / safe_scale), qmin, qmax))
        return cls(dtype, safe_scale.astype(np.float32), zero_point.astype(dtype.numpy), axis)


def quantize(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), in float32."""
    scale, zero_point = _broadcast(params, np.shape(x))
    rounded = np.rint(np.asarray(x, dtype=np.float32) / scale).astype(np.float64)
    qmin, qmax = dtype_range(params.dtype)
    return np.clip(rounded + zero_point, qmin, qmax).astype(params.dtype.numpy)


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero_point) * scale, in float32."""
    scale, zero_point = _broadcast(params, np.shape(q))
    shifted = np.asarray(q).astype(np.int64) - zero_point.astype(np.int64)
    return shifted.astype(np.float32) * scale


def _broadcast(params: QuantParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point shaped to broadcast against a tensor of `shape`."""
    scale, zero_point = params.scale, params.zero_point.astype(np.int64)
    if params.axis is None:
        return scale, zero_point
    if not -len(shape) <= params.axis < len(shape):
        raise ValueError(f"axis {params.axis} is out of range for a tensor of shape {shape}")
    axis = params.axis % len(shape)
    if params.block_size is None:
        if scale.shape != (shape[axis],):
            raise ValueError(f"{scale.size} scales for axis {axis} of a tensor of shape {shape}")
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return scale.reshape(view), zero_point.reshape(view)
    blocks = math.ceil(shape[axis] / params.block_size)
    if scale.shape != (*shape[:axis], blocks, *shape[axis + 1:]):
        raise ValueError(f"blocked scales of shape {scale.shape} do not fit a tensor of shape {shape} "
                         f"with block size {params.block_size} on axis {axis}")
    take = np.arange(shape[axis]) // params.block_size
    return np.take(scale, take, axis=axis), np.take(zero_point, take, axis=axis)
