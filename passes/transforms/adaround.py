"""adaround: learn, layer by layer, whether each weight rounds down or up to its int8 code.

Round-to-nearest minimizes each weight's own error, not the layer's: errors that cancel
in W x matter less than their sizes. AdaRound (Nagel et al., 2020, "Up or Down? Adaptive
Rounding for Post-Training Quantization") picks floor or ceil per weight so that
|| W x - W_q x ||^2 is small on data.

1. Layers: those bias-correct corrects (its rule 1): every Conv, Gemm and MatMul that
   fold-weights will quantize, with a constant float weight at input 1. Kept float
   (rules.float_by_choice, precision marks) means not planned, so not touched; nor is a
   node whose `algorithms` mark leaves adaround out (overrides.py rule 4: `not_chosen`).
2. Scales and bounds are those fold-weights will store with (`folded_params` with the
   options of the fold-weights step that follows, as bias-correct reads them). Codes are
   floor(W/s) + h(V) + zero point, within the channel's round-to-nearest codes (rule 5); h(V) = clip(sigmoid(V) *
   1.2 - 0.1, 0, 1) starts at the fractional part (round-to-nearest's choice).
3. Loss: mean squared difference of the layer's output with the soft weights and with W,
   in units of round-to-nearest's (so `weight` means the same whatever the layer's scale),
   on the layer's own float inputs (the float model's, read in one ONNX Runtime pass as
   bias-correct reads them), plus `weight` * sum(1 - |2h - 1|^beta) after the first 20%
   of the iterations, beta annealed 20 -> 2; Adam, lr 1e-2, minibatches of 32 rows
   (torch on CPU, the op reproduced with its pads, strides, dilations, group, transA/B).
4. Kept rows: `samples` per layer, the first ones read: images for a Conv, vectors (input
   rows along the reduction axis) for Gemm and MatMul, so memory stays bounded.
5. The elements that set their channel's range (the largest magnitude for symmetric codes,
   the min and max otherwise) keep their float value, and no other code leaves that range,
   so the scale fold-weights computes again is unchanged (with reduce_range the extreme is
   63.5 steps, not a code); the others are written back as s * (code - zero point), so
   fold-weights' round(W'/s) gives exactly the learned codes. A layer whose learned codes
   err more than round-to-nearest on the kept rows keeps round-to-nearest (`no_gain`).
6. `time_budget_s` bounds the whole pass: layers not finished when it runs out keep their
   weights (round-to-nearest; `left`).
7. Order: after calibrate (ranges come from the float model), before place-qdq and
   fold-weights; before bias-correct, which then corrects the mean error of the learned
   codes.
8. Measured, output SQNR on the evaluation data (ONNX Runtime, AVX-512 VNNI), int8 ->
   int8-adaround: golden/resnet_like 28.5 -> 30.2 dB (+20 s of compile), mobilenet_like
   15.8 -> 15.7 (no gain, +90 s), outlier_convnet -0.1 -> -0.2 (its ranges, not its
   rounding, are what fails: with equalize first 33.0 -> 34.9); a MobileNetV3-small stand-in
   24.4 -> 24.9 dB with time_budget_s=60.
9. ctx.report["adaround"]: done, no_gain, skipped (elided weights), left, seconds, and per
   layer the mean squared output error on the kept rows with round-to-nearest and after.

    const %w: f32[8,4,3,3]               const %w_adaround: f32[8,4,3,3]    s * learned codes
    %y = Conv(%x, %w, %b)          =>    %y = Conv(%x, %w_adaround, %b)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from qcompiler.ir import Model, NameAllocator, Node, Value
from qcompiler.ir.evaluate import first_rows
from qcompiler.ir.quant import QuantParams, quantize

from ..analyses.observers import tapped_batches
from ..analyses.rules import plans
from ..infra.base import Pass, PassError, register_pass
from ..infra.overrides import chosen
from ..infra.progress import SWITCH, Progress
from ..infra.target import weight_reduce_range
from .fold_weights import folded_params, folded_weight, following_options, weight_axis

_ZETA, _GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (rule 2)
_WARMUP = 0.2  # share of iterations before the rounding regularizer starts (rule 3)
_BATCH = 32


@dataclass
class _Layer:
    """A layer to learn: its node, float weight, the parameters fold-weights will use, its kept inputs."""

    node: Node
    weight: np.ndarray
    params: QuantParams
    symmetric: bool
    rows: list[np.ndarray] = field(default_factory=list)
    kept: int = 0

    def keep(self, x: np.ndarray, limit: int) -> None:
        """Rule 4: rows of one batch until `limit` are kept."""
        if self.kept >= limit:
            return
        if self.node.op_type != "Conv":
            axis = 0 if self.node.op_type == "Gemm" and self.node.attr("transA", 0) else x.ndim - 1
            x = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        taken = x[: limit - self.kept].astype(np.float32)
        self.rows.append(taken)
        self.kept += len(taken)


@register_pass
class AdaRound(Pass):
    """Learn each weight's rounding (floor or ceil) to minimize its layer's output error (AdaRound)."""

    name = "adaround"
    reads = frozenset({"quantize", "precision", "group", "weight_scheme", "algorithms"})
    algorithm = True
    needs = frozenset({"calibrated"})
    refuses = frozenset({"qdq-placed", "weights-folded"})  # fold-weights stores the codes: learn them before

    @dataclass
    class Options:
        """iterations: Adam steps per layer; samples: input rows kept per layer (images for a Conv,
        vectors for Gemm/MatMul); time_budget_s: for the whole pass, layers left keep round-to-nearest;
        weight: the rounding regularizer's weight (lambda); progress: a progress line."""

        iterations: int = 500
        samples: int = 256
        time_budget_s: float = 300.0
        weight: float = 0.1
        progress: Literal["auto", "on", "off"] = "auto"

        def __post_init__(self) -> None:
            if self.iterations < 1:
                raise ValueError(f"iterations must be >= 1, not {self.iterations}")
            if self.samples < 1:
                raise ValueError(f"samples must be >= 1, not {self.samples}")
            if self.time_budget_s < 0:
                raise ValueError(f"time_budget_s must be >= 0, not {self.time_budget_s}")

    def requires(self, model: Model, ctx) -> None:
        if ctx.calibration_data is None:
            raise PassError("adaround learns each layer's rounding on its inputs: it needs calibration data "
                            "(--calib DATA on the command line, or PassContext(calibration_data=...))")

    def run(self, model: Model, ctx) -> bool:
        start = time.perf_counter()
        deadline = start + self.options.time_budget_s
        fold = following_options(ctx.following)
        reduce_range = weight_reduce_range(fold.reduce_range, ctx)
        layers = []
        for node, plan in ctx.analysis("plans", lambda: plans(model)).items():
            layer = self._layer(node, plan, fold, reduce_range)
            if layer is not None:
                layers.append(layer)
        errors: dict[str, dict[str, float]] = {}
        if layers and time.perf_counter() < deadline:
            torch = _torch()
            self._read_inputs(model, layers, ctx.calibration_data)
            names = NameAllocator(model.graph)
            for layer in layers:
                learned = _learn(torch, layer, self.options, deadline)
                if learned is None:
                    self.stats["left"] += 1
                    continue
                weight, before, after = learned
                errors[layer.node.name or layer.node.op_type] = {"rtn": before, "adaround": after}
                if after >= before:
                    self.stats["no_gain"] += 1
                    continue
                self._write(model, names, layer, weight)
        else:
            self.stats["left"] += len(layers)
        ctx.report[self.name] = {
            **{key: self.stats[key] for key in ("done", "no_gain", "skipped", "left", "not_chosen")},
            "seconds": round(time.perf_counter() - start, 3),
            "layers": errors,
        }
        return self.stats["done"] > 0

    def _layer(self, node: Node, plan, fold, reduce_range: bool) -> _Layer | None:
        """Rule 1 and 2: the node as a layer to learn, None when it is not one."""
        found = folded_weight(node, plan)
        if found is None:
            return None
        if not chosen(node, self.name):
            self.stats["not_chosen"] += 1
            return None
        weight, data = found
        if data is None:
            self.stats["skipped"] += 1
            return None
        if node.op_type == "Conv" and node.attr("auto_pad", "NOTSET") != "NOTSET":
            return None
        params = folded_params(data, weight_axis(node, weight, fold), fold, reduce_range)
        return _Layer(node, data.astype(np.float32), params, fold.symmetric)

    def _read_inputs(self, model: Model, layers: list[_Layer], data) -> None:
        """Rule 4: the first `samples` rows of each layer's float input, from one pass over the data."""
        inputs = list(dict.fromkeys(layer.node.inputs[0] for layer in layers))
        progress = Progress(self.name, None, "batches", enabled=SWITCH[self.options.progress])
        for arrays in tapped_batches(model, inputs, first_rows(data, self.options.samples), progress):
            for value, array in zip(inputs, arrays):
                for layer in layers:
                    if layer.node.inputs[0] is value:
                        layer.keep(np.asarray(array), self.options.samples)
            del arrays

    def _write(self, model: Model, names: NameAllocator, layer: _Layer, weight: np.ndarray) -> None:
        """Rule 5: the weight with the learned codes, a new initializer."""
        old = layer.node.inputs[1]
        stored = weight.astype(old.const_array.dtype)
        new = model.graph.add_constant(Value(names.fresh(f"{old.name}_adaround"), const=stored))
        layer.node.set_input(1, new)
        model.graph.drop_unread_constants([old])
        self.stats["done"] += 1


def _torch():
    try:
        import torch
    except ImportError:
        raise PassError("adaround learns with torch, which is not installed: pip install \"qcompiler[torch]\"") from None
    return torch


def _learn(torch, layer: _Layer, options: AdaRound.Options, deadline: float):
    """Rules 2, 3 and 5: (the weight to write, error with round-to-nearest, error with the learned
    codes) on the kept rows; None when the time budget ran out first."""
    if time.perf_counter() >= deadline:
        return None
    params, w = layer.params, layer.weight
    scale = _broadcast(params.scale, params.axis, w.shape)
    zero_point = _broadcast(params.zero_point.astype(np.float32), params.axis, w.shape)
    rtn = quantize(w, params).astype(np.float32)
    scaled = w / scale + zero_point
    extremes, low, high = _range_keepers(scaled, params.axis, layer.symmetric)
    floor = np.floor(scaled)
    rest = np.clip(scaled - floor, 0.01, 0.99)
    generator = torch.Generator().manual_seed(0)
    x = torch.from_numpy(np.concatenate(layer.rows))
    forward = _forward(torch, layer.node)
    t_w, t_scale, t_zp = (torch.from_numpy(np.ascontiguousarray(a)) for a in (w, scale, zero_point))
    t_floor, t_rtn, t_low, t_high, t_extremes = (torch.from_numpy(a) for a in (floor, rtn, low, high, extremes))
    v = torch.nn.Parameter(torch.from_numpy(-np.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)).float())
    optimizer = torch.optim.Adam([v], lr=1e-2)

    def weights(codes):
        return torch.where(t_extremes, t_w, (torch.minimum(torch.maximum(codes, t_low), t_high) - t_zp) * t_scale)

    def rounding(v):
        return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)

    with torch.no_grad():
        target = forward(x, t_w)
        before = torch.mean((forward(x, (t_rtn - t_zp) * t_scale) - target) ** 2).item()
    unit = max(before, 1e-30)
    warmup = int(_WARMUP * options.iterations)
    for step in range(options.iterations):
        if time.perf_counter() >= deadline:
            return None
        pick = torch.randint(len(x), (min(_BATCH, len(x)),), generator=generator)
        h = rounding(v)
        loss = torch.mean((forward(x[pick], weights(t_floor + h)) - target[pick]) ** 2) / unit
        if step >= warmup:
            beta = 20 + (2 - 20) * (step - warmup) / max(1, options.iterations - warmup - 1)
            loss = loss + options.weight * torch.sum(1 - torch.abs(2 * h - 1) ** beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = weights(t_floor + (rounding(v) >= 0.5).float())
        after = torch.mean((forward(x, learned) - target) ** 2).item()
    return learned.numpy(), before, after


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


def _broadcast(array: np.ndarray, axis: int | None, shape: tuple[int, ...]) -> np.ndarray:
    if axis is None:
        return np.asarray(array, dtype=np.float32)
    view = [1] * len(shape)
    view[axis % len(shape)] = -1
    return np.asarray(array, dtype=np.float32).reshape(view)


def _forward(torch, node: Node):
    """The layer without its bias as a torch function of (input rows, weight) (rule 3)."""
    import torch.nn.functional as F

    if node.op_type == "Conv":
        spatial = len(node.inputs[1].const_array.shape) - 2
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
        pads = list(node.attr("pads", [0] * 2 * spatial))
        torch_pads = [p for d in reversed(range(spatial)) for p in (pads[d], pads[d + spatial])]
        strides = list(node.attr("strides", [1] * spatial))
        dilations = list(node.attr("dilations", [1] * spatial))
        group = node.attr("group", 1)
        return lambda x, w: conv(F.pad(x, torch_pads), w, stride=strides, dilation=dilations, groups=group)
    if node.op_type == "Gemm":
        alpha, trans_b = node.attr("alpha", 1.0), node.attr("transB", 0)
        return lambda x, w: alpha * (x @ (w.T if trans_b else w))
    return lambda x, w: x @ w
