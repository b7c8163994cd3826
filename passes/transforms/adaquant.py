"""adaquant: learn, layer by layer, each output channel's weight scale (and the bias) against the
layer's output error with its input quantized as it will run.

Round-to-nearest at s = max|W_c| / qmax spends codes on a channel's largest weights; a smaller
scale clips them and rounds the rest finer. AdaQuant (Hubara et al., 2021, "Accurate Post
Training Quantization With Small Calibration Sets") learns the quantization parameters of each
layer on a few calibration rows, minimizing || f(W, x) - f(Q_s(W), x_q) ||^2: the input is the
quantized one the layer will read, so the weights also learn to offset the activation's error
(adaround learns on float inputs).

1. Layers, their parameters, kept rows, time budget and report: layerwise.py (its rules
   1-7, shared with adaround); here only what a layer learns.
2. Scales: s_c = s_rtn_c * exp(u_c), u_c in [log 0.1, 0] (kept there after each step), u_c = 0
   at the start: fold-weights' own scale max|W_c| / qmax (qmax 127, or 63.5 with reduce_range),
   per output channel or per tensor as fold-weights will store. Q_s(W) = s * clip(round(W / s),
   -b, b) with round's gradient passed straight through, b the code fold-weights gives the
   largest magnitude (127, or 64 with reduce_range); that element of each channel takes +-b.
3. x_q: the layer's kept float input rows through QuantizeLinear and DequantizeLinear with the
   parameters the place-qdq step that follows will give that value (`following_params`: its
   observed range, the target's activation dtype, the node's marks); an input place-qdq leaves
   float stays float.
4. Bias (`bias=true`): a change per output channel, for a Conv or a Gemm whose bias is absent
   or a float constant (layerwise.py rule 6), set to its least-squares value, the mean of
   f(W, x) - f(Q_s(W), x_q) per channel: on each minibatch while the scales learn (the loss
   is then the residual's variance per channel, so clipping a weight whose input barely
   varies costs what a bias cannot take back, not the whole shift), and over the kept rows
   for the stored weights at the end. It thus also takes out the mean error of x_q, which
   bias-correct leaves (its rule 5): the int8-adaquant pipeline runs no bias-correct after
   it, which would correct again, for float inputs.
5. Loss: the mean squared output difference over minibatches of 32 kept rows, in units of
   round-to-nearest's (with x_q); Adam on u, lr 2e-2 annealed to 0 on a cosine.
6. Written back (layerwise.py rule 6): W' = s * clip(codes, -qmax, qmax), the largest magnitude
   of each channel at +-qmax * s, so fold-weights' max|W'_c| / qmax is s_c again (s_c <= its own
   scale) and its round(W' / s_c) the learned codes (+-b for the element at qmax * s). The error
   after is measured with what fold-weights will store from W' (its own `folded_params` and
   `quantize`), so a layer that errs more than round-to-nearest keeps its weights (`no_gain`).
7. Order: after calibrate (x_q needs the ranges), before place-qdq and fold-weights. Symmetric
   weights only: fold-weights{symmetric=false} after it is refused.
8. Measured, output SQNR on the evaluation data (ONNX Runtime, a VNNI target; pass time on 2
   cores): int8 -> int8-adaround / int8-adaquant: golden/resnet_like 28.5 -> 30.1 / 29.8 dB
   (25 s); outlier_convnet -0.05 -> -0.2 / 4.8 (5 s: clipping and the bias take part of
   what its 100x input channels cost); mobilenet_like 15.8 -> 15.7 / 15.8 (20 s); the
   MobileNetV3-small stand-in (tools/conv_standins.py, time_budget_s=60, 26 of 54 layers
   learned) 24.4 -> 25.0 / 23.9, top-1 against labels 0.880 -> 0.855 / 0.870. With bias=false
   resnet_like gets 28.8 and outlier_convnet 0.6, the stand-in 24.7 (48 layers in the budget).
9. ctx.report["adaquant"]: layerwise.py's rule 7, the errors under `rtn` and `adaquant`, and
   per layer `clip`, the mean of s_c / s_rtn_c over its channels.

    const %w: f32[8,4,3,3]               const %w_adaquant: f32[8,4,3,3]    s_c * learned codes
    const %b: f32[8]               =>    const %b_adaquant: f32[8]          b + learned change
    %y = Conv(%x, %w, %b)                %y = Conv(%x, %w_adaquant, %b_adaquant)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from qcompiler.ir import Model, QuantParams, Value
from qcompiler.ir.quant import dequantize, quantize

from ..infra.base import PassError, register_pass
from .fold_weights import FoldWeights
from .layerwise import BATCH, Layer, Learned, LayerwiseOptions, LayerwisePass, broadcast, forward
from .place_qdq import following_params

_MIN_RATIO = 0.1  # the smallest s_c / s_rtn_c (rule 2)
_LR = 2e-2  # on u, rule 5


@register_pass
class AdaQuant(LayerwisePass):
    """Learn each output channel's weight scale and the bias against the layer's output error on quantized inputs (AdaQuant)."""

    name = "adaquant"
    learns = "each layer's weight scales"

    @dataclass
    class Options(LayerwiseOptions):
        """iterations: Adam steps per layer; samples: input rows kept per layer (images for a Conv,
        vectors for Gemm/MatMul); time_budget_s: for the whole pass, layers left keep round-to-nearest;
        bias: learn a bias change per output channel too (Conv, Gemm); progress: a progress line."""

        bias: bool = True

    def prepare(self, model: Model, ctx, fold: FoldWeights.Options) -> None:
        """Rules 3 and 7: the input parameters place-qdq will use."""
        if not fold.symmetric:
            raise PassError("adaquant learns symmetric weight scales: the fold-weights after it must keep "
                            "symmetric=true")
        self.inputs: dict[Value, QuantParams] = following_params(model, ctx)

    def learn(self, torch, layer: Layer, deadline: float) -> Learned | None:
        """Rules 2-6."""
        params, w = layer.params, layer.weight
        base = broadcast(params.scale, params.axis, w.shape)
        reduce = None if params.axis is None else tuple(d for d in range(w.ndim) if d != params.axis % w.ndim)
        largest = np.abs(w).max(axis=reduce, keepdims=True)
        qmax = largest / base  # 127, or 63.5 with reduce_range; 0 for a channel of zeros
        setter = (np.abs(w) == largest) & (largest > 0)  # the element that sets its channel's scale
        sign = np.where(w < 0, -1.0, 1.0).astype(np.float32)
        x = np.concatenate(layer.rows)
        x_q = self._quantized_input(layer, x)
        op = forward(torch, layer.node)
        t_w, t_base, t_qmax, t_bound, t_setter, t_sign = (
            torch.from_numpy(np.ascontiguousarray(a)) for a in
            (w, base, qmax.astype(np.float32), np.rint(qmax).astype(np.float32), setter, sign))
        t_x, t_xq = torch.from_numpy(x), torch.from_numpy(x_q)
        log_ratio = torch.nn.Parameter(torch.zeros(base.shape))

        def scale():
            return t_base * torch.exp(log_ratio)

        def fake_quantized():
            """Rule 2: s * codes, round's gradient passed straight through."""
            s = scale()
            v = t_w / s
            codes = torch.clamp(v + (torch.round(v) - v).detach(), -t_bound, t_bound)
            return torch.where(t_setter, t_sign * t_bound, codes) * s

        with torch.no_grad():
            target = op(t_x, t_w)
            rtn = torch.from_numpy(dequantize(quantize(w, params), params))
            before = torch.mean((op(t_xq, rtn) - target) ** 2).item()
        unit = max(before, 1e-30)
        axes = [d for d in range(target.ndim) if d != layer.output_axis % target.ndim]
        learns_bias = self.options.bias and layer.takes_bias()

        def error(output, wanted):
            """Rule 5: the residual, less its mean per output channel when the bias takes that (rule 4)."""
            residual = output - wanted
            return residual - torch.mean(residual, dim=axes, keepdim=True) if learns_bias else residual

        optimizer = torch.optim.Adam([log_ratio], lr=_LR)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.options.iterations)
        generator = torch.Generator().manual_seed(0)
        for _ in range(self.options.iterations):
            if time.perf_counter() >= deadline:
                return None
            pick = torch.randint(len(x), (min(BATCH, len(x)),), generator=generator)
            loss = torch.mean(error(op(t_xq[pick], fake_quantized()), target[pick]) ** 2) / unit
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                log_ratio.clamp_(math.log(_MIN_RATIO), 0.0)
        with torch.no_grad():
            s = scale()
            written = (torch.clamp(torch.round(t_w / s), -t_qmax, t_qmax) * s)
            written = torch.where(t_setter, t_sign * t_qmax * s, written).numpy()
            stored = layer.folded_params(written)
            output = op(t_xq, torch.from_numpy(dequantize(quantize(written, stored), stored)))
            change = torch.mean(target - output, dim=axes, keepdim=True) if learns_bias else None
            after = torch.mean(error(output, target) ** 2).item()
            ratio = float(np.mean(np.exp(log_ratio.numpy())))
        return Learned(written, None if change is None else change.reshape(-1).numpy(), before, after,
                       {"clip": round(ratio, 4)})

    def _quantized_input(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        """Rule 3."""
        params = self.inputs.get(layer.node.inputs[0])
        return x if params is None else dequantize(quantize(x, params), params)
