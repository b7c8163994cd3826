"""adaround: learn, layer by layer, whether each weight rounds down or up to its int8 code.

Round-to-nearest minimizes each weight's own error, not the layer's: errors that cancel
in W x matter less than their sizes. AdaRound (Nagel et al., 2020, "Up or Down? Adaptive
Rounding for Post-Training Quantization") picks floor or ceil per weight so that
|| W x - W_q x ||^2 is small on data.

1. Layers, their parameters, kept rows, time budget and report: layerwise.py (its rules
   1-7, shared with adaquant); here only what a layer learns.
2. Codes are floor(W/s) + h(V) + zero point, within the channel's round-to-nearest codes
   (rule 5), with the scales fold-weights will store; h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1)
   starts at the fractional part (round-to-nearest's choice).
3. Loss: mean squared difference of the layer's output with the soft weights and with W,
   in units of round-to-nearest's (so `weight` means the same whatever the layer's scale),
   on the layer's own float inputs, plus `weight` * sum(1 - |2h - 1|^beta) after the first
   20% of the iterations, beta annealed 20 -> 2; Adam, lr 1e-2, minibatches of 32 rows.
4. The bias is not learned: bias-correct, after it, corrects the mean error of the learned codes.
5. The elements that set their channel's range (the largest magnitude for symmetric codes,
   the min and max otherwise) keep their float value, and no other code leaves that range,
   so the scale fold-weights computes again is unchanged (with reduce_range the extreme is
   63.5 steps, not a code); the others are written back as s * (code - zero point), so
   fold-weights' round(W'/s) gives exactly the learned codes.
6. Order: after calibrate (ranges come from the float model), before place-qdq and
   fold-weights; before bias-correct.
7. Measured, output SQNR on the evaluation data (ONNX Runtime, AVX-512 VNNI), int8 ->
   int8-adaround: golden/resnet_like 28.5 -> 30.1 dB (+24 s of compile on 2 cores, torch on
   one thread), mobilenet_like 15.8 -> 15.7 (no gain, +21 s), outlier_convnet -0.1 -> -0.2 (its ranges, not its
   rounding, are what fails: with equalize first 33.0 -> 34.9); a MobileNetV3-small stand-in
   24.4 -> 25.0 dB with time_budget_s=60 (43 of 54 layers learned).
8. ctx.report["adaround"]: layerwise.py's rule 7, the errors under `rtn` and `adaround`.

    const %w: f32[8,4,3,3]               const %w_adaround: f32[8,4,3,3]    s * learned codes
    %y = Conv(%x, %w, %b)          =>    %y = Conv(%x, %w_adaround, %b)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from qcompiler.ir.quant import quantize

from ..infra.base import register_pass
from .layerwise import BATCH, Layer, Learned, LayerwiseOptions, LayerwisePass, broadcast, forward

_ZETA, _GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (rule 2)
_WARMUP = 0.2  # share of iterations before the rounding regularizer starts (rule 3)


@register_pass
class AdaRound(LayerwisePass):
    """Learn each weight's rounding (floor or ceil) to minimize its layer's output error (AdaRound)."""

    name = "adaround"
    learns = "each layer's rounding"

    @dataclass
    class Options(LayerwiseOptions):
        """iterations: Adam steps per layer; samples: input rows kept per layer (images for a Conv,
        vectors for Gemm/MatMul); time_budget_s: for the whole pass, layers left keep round-to-nearest;
        weight: the rounding regularizer's weight (lambda); progress: a progress line."""

        weight: float = 0.1

    def learn(self, torch, layer: Layer, deadline: float) -> Learned | None:
        """Rules 2, 3 and 5."""
        params, w = layer.params, layer.weight
        scale = broadcast(params.scale, params.axis, w.shape)
        zero_point = broadcast(params.zero_point.astype(np.float32), params.axis, w.shape)
        rtn = quantize(w, params).astype(np.float32)
        scaled = w / scale + zero_point
        extremes, low, high = _range_keepers(scaled, params.axis, layer.fold.symmetric)
        floor = np.floor(scaled)
        rest = np.clip(scaled - floor, 0.01, 0.99)
        generator = torch.Generator().manual_seed(0)
        x = torch.from_numpy(np.concatenate(layer.rows))
        op = forward(torch, layer.node)
        t_w, t_scale, t_zp = (torch.from_numpy(np.ascontiguousarray(a)) for a in (w, scale, zero_point))
        t_floor, t_rtn, t_low, t_high, t_extremes = (torch.from_numpy(a) for a in (floor, rtn, low, high, extremes))
        v = torch.nn.Parameter(torch.from_numpy(-np.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)).float())
        optimizer = torch.optim.Adam([v], lr=1e-2)

        def weights(codes):
            return torch.where(t_extremes, t_w, (torch.minimum(torch.maximum(codes, t_low), t_high) - t_zp) * t_scale)

        def rounding(v):
            return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)

        with torch.no_grad():
            target = op(x, t_w)
            before = torch.mean((op(x, (t_rtn - t_zp) * t_scale) - target) ** 2).item()
        unit = max(before, 1e-30)
        iterations = self.options.iterations
        warmup = int(_WARMUP * iterations)
        for step in range(iterations):
            if time.perf_counter() >= deadline:
                return None
            pick = torch.randint(len(x), (min(BATCH, len(x)),), generator=generator)
            h = rounding(v)
            loss = torch.mean((op(x[pick], weights(t_floor + h)) - target[pick]) ** 2) / unit
            if step >= warmup:
                beta = 20 + (2 - 20) * (step - warmup) / max(1, iterations - warmup - 1)
                loss = loss + self.options.weight * torch.sum(1 - torch.abs(2 * h - 1) ** beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            learned = weights(t_floor + (rounding(v) >= 0.5).float())
            after = torch.mean((op(x, learned) - target) ** 2).item()
        return Learned(learned.numpy(), None, before, after)


def _range_keepers(scaled: np.ndarray, axis: int | None, symmetric: bool):
    """Rule 5: where the elements that set each channel's (or the tensor's) range are, and the codes
    that bound the others so the range stays: [-m, m] for symmetric codes (m the largest magnitude
    of W/s, which alone sets the scale), else [min, max] of W/s + zero point, rounded inwards."""
    reduce = None if axis is None else tuple(d for d in range(scaled.ndim) if d != axis % scaled.ndim)
    slack = 1e-3  # W/s of the extreme is 127 up to float rounding; a code off by that keeps the scale
    if symmetric:
        largest = np.abs(scaled).max(axis=reduce, keepdims=True)
        high = np.floor(largest + slack)
        return np.abs(scaled) == largest, -high, high
    lowest, highest = scaled.min(axis=reduce, keepdims=True), scaled.max(axis=reduce, keepdims=True)
    return (scaled == lowest) | (scaled == highest), np.ceil(lowest - slack), np.floor(highest + slack)
