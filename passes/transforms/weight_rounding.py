"""How weight-only picks the codes of a [K, N] weight (x @ W): round to nearest, GPTQ or AWQ.

Each method returns codes and blocked parameters (blocks of `block_size` along K, axis 0)
of exactly the stored form: dequantize(codes, params) is the weight the model computes
with. GPTQ and AWQ read the weight's inputs only through their Gram matrix G = X^T X
(float64, summed over the calibration rows), since ||X E||^2 = sum(E * (G E)) for any
weight error E: memory is K x K per weight whatever the number of rows.

1. rtn: blocked_params over each block's [min, max], then round to nearest.
2. gptq (Frantar et al., 2022, Algorithm 1, with groups): H = G + 0.01 mean(diag G) I
   (the paper's 2 X^T X up to a factor, which changes nothing), U = the upper Cholesky
   factor of H^-1. Rows of W (input channels) are rounded in order; the error of row i,
   divided by U[i, i], is spread over the rows after it by U[i, i+1:]; within a block at
   once, onto later blocks in one product (the paper's lazy batch, the block being the
   quantization block). On-the-fly groups: a block's parameters come from its rows as they
   stand when the block starts (earlier blocks' compensation applied, its own not yet),
   as reference GPTQ does with groupsize equal to its batch size, so compensation can move
   a weight no further than its block's range clips it. An input channel that is 0 on every
   row (G[k, k] = 0) gets H[k, k] = 1: it is rounded to nearest and neither gives nor takes error.
3. awq (Lin et al., 2023): per input channel s = mean|x|^alpha, normalized by
   sqrt(max s * min s); W' = diag(s) W rounded (rule 4), the input divided by s. alpha runs
   over `AWQ_GRID` points of [0, 1] and the one minimizing the calibration loss
   ||X W - (X / s) Q(diag(s) W)||^2 wins; alpha = 0 leaves the weight as it is. The division
   is stored as its float32 inverse c = 1 / s and the weight folded as W / c, so
   (x * c) @ (W / c) is x @ W up to float rounding. Where the winner leaves every c at 1
   (alpha = 0, or channels of equal mean |x|), the input is left as it is.
4. awq's clip search (AWQ's auto-clip): each block's range, per column, is shrunk by the
   factor of `CLIP_GRID` (1 down to 0.55) whose rounding errs least on that block's own
   output, e^T G_bb e with G_bb the block's diagonal block of G; clipping a block's extremes
   rounds its other weights finer. On one 512x512 weight with correlated inputs
   (bench_weight_only.correlated_inputs, block 32, output SQNR on held-out rows) RTN has
   20.6 dB, scaling alone 22.2, clipping alone 24.7, and the joint search picks alpha = 0
   there (24.7); on the encoders' outlier channels the scaling is what gains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcompiler.ir import DType, QuantParams
from qcompiler.ir.quant import dequantize, quantize

from .weight_quant import blocked_params

DAMPENING = 0.01  # of the mean Hessian diagonal (rule 2)
AWQ_GRID = 20  # alphas tried in [0, 1] (rule 3)
CLIP_GRID = 1.0 - np.arange(10) / 20  # 1, 0.95, ..., 0.55: factors on a block's range awq tries (rule 4)
_AWQ_MIN_SCALE = 1e-4  # channels whose mean |x| is below this scale as if it were this


@dataclass
class InputStatistics:
    """What GPTQ and AWQ need of a weight's inputs, summed over calibration rows in float64."""

    channels: int
    gram: np.ndarray = field(init=False)  # X^T X
    abs_sum: np.ndarray = field(init=False)  # sum |x| per channel
    rows: int = 0

    def __post_init__(self) -> None:
        self.gram = np.zeros((self.channels, self.channels))
        self.abs_sum = np.zeros(self.channels)

    def add(self, rows: np.ndarray) -> None:
        """One batch of input rows, [m, K]."""
        x = rows.astype(np.float64)
        self.gram += x.T @ x
        self.abs_sum += np.abs(x).sum(axis=0)
        self.rows += x.shape[0]

    @classmethod
    def total(cls, parts: list[InputStatistics]) -> InputStatistics:
        """The statistics of all the parts' rows (a weight read by several ops pools their inputs)."""
        if len(parts) == 1:
            return parts[0]
        total = cls(parts[0].channels)
        for part in parts:
            total.gram += part.gram
            total.abs_sum += part.abs_sum
            total.rows += part.rows
        return total


@dataclass
class Rounded:
    """A weight's stored codes [K, N] and blocked params (axis 0), and for AWQ the input's factor c [K]."""

    codes: np.ndarray
    params: QuantParams
    input_scale: np.ndarray | None = None

    def effective_weight(self) -> np.ndarray:
        """The weight the model computes x @ W with, the input factor moved into it."""
        weight = dequantize(self.codes, self.params).astype(np.float64)
        return weight if self.input_scale is None else weight * self.input_scale[:, None]


def rtn(weight: np.ndarray, block_size: int, dtype: DType, symmetric: bool,
        shrink: np.ndarray | float = 1.0) -> Rounded:
    """Rule 1 (rule 4 with `shrink`)."""
    params = blocked_params(weight, 0, block_size, dtype, symmetric, shrink)
    return Rounded(quantize(weight, params), params)


def gptq(weight: np.ndarray, gram: np.ndarray, block_size: int, dtype: DType, symmetric: bool) -> Rounded:
    """Rule 2."""
    k = weight.shape[0]
    w = weight.astype(np.float64)
    hessian = gram.copy()
    dead = np.flatnonzero(np.diag(gram) == 0)
    hessian[dead, dead] = 1.0
    hessian[np.diag_indices(k)] += DAMPENING * np.mean(np.diag(hessian))
    u = np.linalg.cholesky(np.linalg.inv(hessian)).T
    codes = np.empty(weight.shape, dtype.numpy)
    blocks = []
    for start in range(0, k, block_size):
        stop = min(start + block_size, k)
        params = blocked_params(w[start:stop].astype(np.float32), 0, block_size, dtype, symmetric)  # [1, N]
        errors = np.empty((stop - start, w.shape[1]))
        for i in range(start, stop):
            row = w[i:i + 1]
            codes[i] = quantize(row, params)[0]
            errors[i - start] = (row[0] - dequantize(codes[i:i + 1], params)[0]) / u[i, i]
            w[i + 1:stop] -= np.outer(u[i, i + 1:stop], errors[i - start])
        w[stop:] -= u[start:stop, stop:].T @ errors
        blocks.append(params)
    return Rounded(codes, QuantParams(dtype, np.concatenate([p.scale for p in blocks]),
                                      np.concatenate([p.zero_point for p in blocks]), axis=0, block_size=block_size))


def awq(weight: np.ndarray, stats: InputStatistics, block_size: int, dtype: DType, symmetric: bool) -> Rounded:
    """Rule 3."""
    mean_abs = np.maximum(stats.abs_sum / max(stats.rows, 1), _AWQ_MIN_SCALE)
    best, best_loss = None, np.inf
    for alpha in np.linspace(0.0, 1.0, AWQ_GRID):
        s = mean_abs**alpha
        input_scale = (np.sqrt(s.max() * s.min()) / s).astype(np.float32)  # c = 1 / normalized s
        folded = clipped(weight / input_scale[:, None], stats.gram * np.outer(input_scale, input_scale),
                         block_size, dtype, symmetric)
        folded.input_scale = input_scale
        loss = output_error(weight, folded, stats.gram)
        if loss < best_loss:
            best, best_loss = folded, loss
    if np.all(best.input_scale == 1.0):
        best.input_scale = None  # nothing to divide: no Mul
    return best


def clipped(weight: np.ndarray, gram: np.ndarray, block_size: int, dtype: DType, symmetric: bool) -> Rounded:
    """Rule 4: each block's range shrunk, per column, by the CLIP_GRID factor its own rows err least with."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    pad = blocks * block_size - k  # a partial last block: zero rows, zero inputs, no error
    diagonal = np.pad(gram, ((0, pad), (0, pad))).reshape(blocks, block_size, blocks, block_size)
    diagonal = diagonal[np.arange(blocks), :, np.arange(blocks), :]  # [blocks, B, B]: each block's own G
    best, best_loss = np.ones((blocks, n)), np.full((blocks, n), np.inf)
    for shrink in CLIP_GRID:
        trial = rtn(weight, block_size, dtype, symmetric, shrink)
        error = np.pad(dequantize(trial.codes, trial.params) - weight, ((0, pad), (0, 0))).astype(np.float64)
        error = error.reshape(blocks, block_size, n)
        loss = np.sum(error * (diagonal @ error), axis=1)
        better = loss < best_loss
        best[better], best_loss[better] = shrink, loss[better]
    return rtn(weight, block_size, dtype, symmetric, best)


def output_error(weight: np.ndarray, rounded: Rounded, gram: np.ndarray) -> float:
    """||X W - X W_q||^2 over the rows G sums."""
    error = rounded.effective_weight() - weight.astype(np.float64)
    return float(np.sum(error * (gram @ error)))


def output_sqnr_db(weight: np.ndarray, rounded: Rounded, gram: np.ndarray) -> float:
    """The SQNR of x @ W_q against x @ W over the rows G sums."""
    w = weight.astype(np.float64)
    signal, noise = float(np.sum(w * (gram @ w))), output_error(weight, rounded, gram)
    return float("inf") if noise == 0 else round(float(10 * np.log10(signal / noise)), 2)
