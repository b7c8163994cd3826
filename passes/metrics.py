"""How far a quantized tensor strays from its float original, as sums over batches.

1. Float64 sums kept per tensor (sum ref^2, sum (ref-q)^2, sum q^2, sum ref*q,
   max |ref-q|, rows whose argmax agrees), so memory holds one batch whatever the amount
   of data, and the result equals the one-shot value over all batches joined:
   - SQNR = 10 log10(sum ref^2 / sum (ref-q)^2) dB: +inf when the tensors are identical,
     -inf when the reference is all zeros and the quantized tensor is not;
   - cosine of the flattened tensors: 1 when both are all zeros, 0 when only one is;
   - top-1 agreement only for classifier-like tensors (float, rank 2 [batch, classes],
     classes >= 2): the share of rows whose argmax agrees. None for any other.
2. Positions where either tensor is NaN or Inf are left out of every sum, so one bad
   value does not hide the error of the rest; `nonfinite` counts them in the quantized
   tensor. SQNR and cosine are NaN when no position is left to compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcompiler.ir import EvaluationError


@dataclass(frozen=True)
class OutputMetrics:
    """The error of one quantized output against the float one, over `samples` rows (axis 0)."""

    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    top1_agreement: float | None
    samples: int
    nonfinite: int


class ErrorSums:
    """The running sums of one tensor, batch by batch (rules 1, 2)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.signal = self.noise = self.quant_energy = self.dot = self.max_error = 0.0
        self.compared = self.samples = self.nonfinite = self.agreeing = 0
        self.classifier = True

    def add(self, ref: np.ndarray, quant: np.ndarray) -> None:
        if ref.shape != quant.shape:
            raise EvaluationError(f"{self.name!r} has shape {ref.shape} in the float model but "
                                  f"{quant.shape} in the quantized model")
        self.samples += ref.shape[0] if ref.ndim else 1
        self.classifier = self.classifier and ref.ndim == 2 and ref.shape[1] >= 2 and ref.dtype.kind == "f"
        if self.classifier:
            self.agreeing += int(np.count_nonzero(ref.argmax(axis=1) == quant.argmax(axis=1)))
        r = np.asarray(ref, dtype=np.float64).ravel()
        q = np.asarray(quant, dtype=np.float64).ravel()
        finite_q = np.isfinite(q)
        self.nonfinite += int(q.size - np.count_nonzero(finite_q))
        finite = finite_q & np.isfinite(r)
        if not finite.all():
            r, q = r[finite], q[finite]
        error = r - q
        self.signal += float(r @ r)
        self.noise += float(error @ error)
        self.quant_energy += float(q @ q)
        self.dot += float(r @ q)
        self.compared += error.size
        if error.size:
            self.max_error = max(self.max_error, float(np.abs(error).max()))

    def metrics(self) -> OutputMetrics:
        top1 = self.agreeing / self.samples if self.classifier and self.samples else None
        return OutputMetrics(self.name, self._sqnr(), self._cosine(), self.max_error, top1, self.samples,
                             self.nonfinite)

    def _sqnr(self) -> float:
        if not self.compared:
            return math.nan
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)

    def _cosine(self) -> float:
        if not self.compared:
            return math.nan
        if self.signal == 0 or self.quant_energy == 0:
            return 1.0 if self.signal == self.quant_energy else 0.0
        return self.dot / math.sqrt(self.signal * self.quant_energy)
