"""Quantization parameters carried on IR values.

Once a pass decides how a value is quantized it records it here; only QDQ placement
and export turn these records into QuantizeLinear/DequantizeLinear nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dtypes import DType

QUANT_DTYPES = frozenset(
    {DType.INT8, DType.UINT8, DType.INT16, DType.UINT16, DType.INT4, DType.UINT4,
     DType.INT32, DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ}
)


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
