"""Per-value quantization error: how far a value of the quantized model is from the float model's.

Analysis data, not part of the model: dumps print it as `err<...>` after a value's range,
and ONNX export leaves it out.

1. `sqnr_db` is the SQNR of the quantized value against the float one; `added_db` that of
   the noise this value adds beyond what its inputs carried in. Both are +inf when exact
   and nan when nothing was compared.
2. `cosine` lies in [-1, 1] (or is nan). Float rounding may push a computed cosine a hair
   past +-1; such a value is clamped, anything farther is refused.
3. `max_abs_error` is not negative (it may be nan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# How far float32 dot products and norms may carry a cosine past +-1.
_COSINE_SLACK = 1e-5


@dataclass(frozen=True)
class ErrorStats:
    """The error a quantized model makes at one value, as an accuracy debugger measures it."""

    sqnr_db: float
    added_db: float
    cosine: float
    max_abs_error: float

    def __post_init__(self) -> None:
        for name in ("sqnr_db", "added_db", "cosine", "max_abs_error"):  # numpy scalars -> plain floats
            object.__setattr__(self, name, float(getattr(self, name)))
        if abs(self.cosine) > 1 + _COSINE_SLACK:
            raise ValueError(f"cosine {self.cosine} is outside [-1, 1]")
        if not math.isnan(self.cosine):
            object.__setattr__(self, "cosine", min(1.0, max(-1.0, self.cosine)))
        if self.max_abs_error < 0:
            raise ValueError(f"max_abs_error {self.max_abs_error} is negative")
