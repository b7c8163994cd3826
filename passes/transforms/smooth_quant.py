"""smooth-quant: move activation outliers per input channel into the weights that read them (SmoothQuant).

A few channels of a transformer's activations run 10-100x larger than the rest, so one
per-tensor int8 scale leaves the others a handful of levels; weights are quantized per
output channel and take a rescaling of their rows easily. Xiao et al., 2022.

1. A value X is smoothed when every reader is linear in it with a constant weight
   reducing over X's last dim: MatMul(X, W) with W a 2-D constant [K, N], or Gemm(X, W)
   with transA = 0 and W constant ([K, N], or [N, K] with transB). All readers see the
   same X', so all must qualify for the division to fold (rule 3). A value also read by
   anything else (a post-LN model's residual Add reads the LayerNorm's output) can only
   be smoothed through a Mul in front of its linear readers (rule 4). Only values of the
   main graph, as calibration taps only those. A reader whose `algorithms` mark leaves
   smooth-quant out (overrides.py rule 4) counts as not linear.
2. act_max[k] = max |X[..., k]| over the calibration data (one ONNX Runtime pass over the
   float model, through calibrate's `observe` with a per-channel minmax observer; with
   `samples=n`, whole batches until n rows are seen), w_max[k] = max over the readers of
   max |W[k, :]|, and s[k] = act_max[k]^alpha / w_max[k]^(1 - alpha), clamped to
   [1e-5, 1e5]; s[k] = 1 where act_max[k] or w_max[k] is 0 (nothing to balance).
   alpha = 1 flattens X' entirely (every channel's maximum becomes 1) and alpha = 0 the
   weights' rows; 0.5, the paper's default, splits the difficulty evenly.
3. Each reader's weight becomes diag(s) W (a new initializer; the old goes when unread),
   and X becomes X / s where that costs nothing, in the constants of X's producer:
   a normalization (rules.NORMS: LayerNormalization, RMSNormalization,
   SimplifiedLayerNormalization) with constant scale and bias whose last dim is K
   divides both by s; Mul(Z, c) with a constant c divides c; Add(Y, d) with a constant d
   divides d when Y is read only by that Add and is itself foldable (so a decomposed
   LayerNorm's Mul(gamma) + Add(beta) tail folds, grouped by fuse or not).
4. Where nothing folds the division, `insert_mul=true` puts Mul(X, 1/s) in front of the
   linear readers (the others keep reading X), as ONNX Runtime's quantizer does; the Mul stays float (rules: a constant
   operand) and costs one elementwise pass. Off by default, as in the paper, which smooths
   only where the division folds (the inputs of QKV and the first FFN Linear, after a
   LayerNorm): counted as `not_foldable`. Measured in the int8 pipeline (reduce_range),
   it gains 3 dB SQNR on golden/transformer_block (18.1 -> 21.0) but loses 4 dB on
   golden/mlp (27.8 -> 23.5), where it smooths ReLU outputs that had no outliers.
   A graph output is never folded into (its values would change); it takes a Mul or is
   left alone.
5. The float function is kept: X' W' = X W up to float rounding. The pass changes weights
   and activations, so it runs after fuse and before insert-observers (refused once
   values carry observers or calibrated ranges).
6. Stats: values_smoothed, folded, muls_inserted, weights_scaled, not_foldable.
   ctx.report["smooth-quant"] holds them with alpha, the batches read, the time and, per
   value smoothed, its readers, how the division went in and its outlier ratio (largest
   channel maximum over the median one, measured before smoothing).

    %x = LayerNormalization(%h, %g, %b)          %x = LayerNormalization(%h, %g_smoothed, %b_smoothed)   g/s, b/s
    %q = MatMul(%x, %wq)                   =>    %q = MatMul(%x, %wq_smoothed)                           diag(s) wq
    %k = MatMul(%x, %wk)                         %k = MatMul(%x, %wk_smoothed)

    %a = Gelu(%f)                                %a = Gelu(%f)
    %y = MatMul(%a, %w2)          insert_mul =>  %a_smoothed = Mul(%a, %a_smooth_scale)                  1/s
                                                 %y = MatMul(%a_smoothed, %w2_smoothed)
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcompiler.ir import Graph, Model, NameAllocator, Node, Use, Value
from qcompiler.ir.evaluate import main_values

from ..infra.base import Pass, PassError, register_pass
from ..infra.overrides import chosen
from ..analyses.observers import Observations, observe
from ..infra.progress import SWITCH, Progress
from ..analyses.rules import NORMS, is_float
from .patterns import scale_input

_SCALE_LIMITS = (1e-5, 1e5)
_CHANNEL_MINMAX = ("minmax", (("axis", -1),))


@dataclass
class _Target:
    """A value to smooth: its readers, their weights as [K, N], and the constant inputs
    (node, input index) its producer folds 1/s into (None: a Mul must be inserted)."""

    value: Value
    readers: list[Node]
    weights: list[np.ndarray]
    absorbers: list[Use] | None


@register_pass
class SmoothQuant(Pass):
    """Migrate activation outliers per input channel into the following MatMul/Gemm weights (SmoothQuant)."""

    name = "smooth-quant"
    reads = frozenset({"quantize", "precision", "group", "algorithms"})
    algorithm = True

    @dataclass
    class Options:
        """alpha: migration strength in [0, 1] (rule 2); insert_mul: smooth values whose division
        folds nowhere through an inserted Mul (rule 4); samples: rows of calibration data to
        measure, in whole batches (0: all); progress: a progress line (auto = on a terminal only)."""

        alpha: float = 0.5
        insert_mul: bool = False
        samples: int = 0
        progress: Literal["auto", "on", "off"] = "auto"

        def __post_init__(self) -> None:
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], not {self.alpha}")
            if self.samples < 0:
                raise ValueError(f"samples must be >= 0 (0: all), not {self.samples}")

    def requires(self, model: Model, ctx) -> None:
        if ctx.calibration_data is None:
            raise PassError("smooth-quant measures activations: it needs calibration data (--calib DATA on the "
                            "command line, or PassContext(calibration_data=...))")
        if any("observer" in v.meta or v.observed_range is not None for v in main_values(model)):
            raise PassError("smooth-quant changes weights and activations: run it before insert-observers "
                            "and calibrate")

    def run(self, model: Model, ctx) -> bool:
        start = time.perf_counter()
        found = _targets(model)
        targets = [t for t in found if t.absorbers is not None or self.options.insert_mul]
        self.stats["not_foldable"] += len(found) - len(targets)
        batches = 0
        smoothed = []
        if targets:
            maxima, batches = self._activation_maxima(model, [t.value for t in targets], ctx.calibration_data,
                                                      ctx.observations)
            names = NameAllocator(model.graph)
            for target, act_max in zip(targets, maxima):
                smoothed.append({"value": target.value.name, "readers": [n.name for n in target.readers],
                                 "how": "Mul inserted" if target.absorbers is None else
                                 f"folded into {target.value.producer.op_type}",
                                 "outlier_ratio": outlier_ratio(act_max)})
                self._smooth(model.graph, names, target, smoothing_scales(act_max, _weight_maxima(target),
                                                                           self.options.alpha))
        ctx.report[self.name] = {
            "alpha": self.options.alpha,
            **{key: self.stats[key] for key in ("values_smoothed", "folded", "muls_inserted", "weights_scaled",
                                                "not_foldable")},
            "batches": batches,
            "seconds": round(time.perf_counter() - start, 3),
            "values": smoothed,
        }
        return bool(targets)

    def _activation_maxima(self, model: Model, values: list[Value], data,
                           observations: Observations | None) -> tuple[list[np.ndarray], int]:
        """max |x| per last-dim channel of each value, and the batches read (rule 2); from `observations`
        when an earlier compile measured them."""
        rows = self.options.samples
        progress = Progress(self.name, operator.length_hint(data) if not rows else None, "batches",
                            enabled=SWITCH[self.options.progress])
        observers, batches = observe(model, values, [_CHANNEL_MINMAX] * len(values), data, progress, rows=rows,
                                     store=observations)
        ranges = [observer.range() for observer in observers]
        return [np.maximum(np.abs(lo), np.abs(hi)) for lo, hi in ranges], batches

    def _smooth(self, graph: Graph, names: NameAllocator, target: _Target, s: np.ndarray) -> None:
        scaled: dict[tuple[Value, int], Value] = {}  # (old weight, its K axis) -> new weight, for shared weights
        for node in target.readers:
            axis = 1 if node.op_type == "Gemm" and node.attr("transB", 0) else 0
            old = node.inputs[1]
            if (old, axis) not in scaled:
                data = old.const_array
                scaled[old, axis] = _replace_constant(graph, names, node, 1, data * _along(s, axis, data.ndim))
                self.stats["weights_scaled"] += 1
            else:
                node.set_input(1, scaled[old, axis])
                graph.drop_unread_constants([old])
        if target.absorbers is None:
            scale_input(graph, names, target.value, target.readers, 1.0 / s, "smooth_scale", "smoothed")
            self.stats["muls_inserted"] += 1
        else:
            for node, index in target.absorbers:
                _replace_constant(graph, names, node, index, node.inputs[index].const_array / s)
            self.stats["folded"] += 1
        self.stats["values_smoothed"] += 1


def outlier_ratio(act_max: np.ndarray) -> float:
    """The largest channel maximum over the median one: how far outliers stretch a per-tensor scale."""
    median = float(np.median(act_max))
    return round(float(np.max(act_max)) / median, 1) if median > 0 else math.inf


def smoothing_scales(act_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """s = act_max^alpha / w_max^(1 - alpha), clamped; 1 where either maximum is 0 (rule 2)."""
    act_max, w_max = np.asarray(act_max, np.float64), np.asarray(w_max, np.float64)
    both = (act_max > 0) & (w_max > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(both, act_max**alpha / w_max ** (1.0 - alpha), 1.0)
    return np.clip(s, *_SCALE_LIMITS)


def _weight_maxima(target: _Target) -> np.ndarray:
    """w_max[k]: the largest |W[k, :]| over all readers' weights (rule 2)."""
    return np.max([np.abs(w).max(axis=1) for w in target.weights], axis=0)


def _targets(model: Model) -> list[_Target]:
    """The values with linear readers (rule 1), with where their division folds (rules 3, 4)."""
    graph = model.graph
    found = []
    for value in main_values(model):
        readers = value.consumers()
        if not readers or not is_float(value) or any(node.graph is not graph for node in readers):
            continue
        linear = [(node, w) for node in readers
                  if chosen(node, SmoothQuant.name) and (w := _reduction_weight(node, value)) is not None]
        if not linear or len({w.shape[0] for _, w in linear}) != 1:
            continue
        weights = [w for _, w in linear]
        foldable = len(linear) == len(readers) and not value.is_graph_output()
        absorbers = _absorbers(value, weights[0].shape[0]) if foldable else None
        found.append(_Target(value, [node for node, _ in linear], weights, absorbers))
    return found


def _reduction_weight(node: Node, value: Value) -> np.ndarray | None:
    """The reader's weight as [K, N] when it reads `value` only as its input A (rule 1)."""
    if node.domain or node.op_type not in ("MatMul", "Gemm"):
        return None
    if [u.index for u in value.uses() if u.user is node] != [0]:
        return None
    if node.op_type == "Gemm" and node.attr("transA", 0):
        return None
    w = node.inputs[1].const_array
    if w is None or w.ndim != 2 or w.dtype.kind != "f":
        return None
    return w.T if node.op_type == "Gemm" and node.attr("transB", 0) else w


def _absorbers(value: Value, channels: int) -> list[Use] | None:
    """The constant inputs of the producer (and its chain) that dividing by s folds X / s into (rule 3)."""
    node = value.producer
    if node is None or value.output_index != 0:
        return None
    rank = len(value.shape) if value.shape is not None else None
    if node.op_type in NORMS:
        params = [Use(node, i) for i in (1, 2) if i < len(node.inputs) and node.inputs[i] is not None]
        fits = all(_divisible(node.inputs[i], rank) and node.inputs[i].const_array.shape[-1:] == (channels,)
                   for _, i in params)
        return params if params and fits else None
    if node.op_type not in ("Mul", "Add") or node.domain or len(node.inputs) != 2:
        return None
    for index in (1, 0):
        other = node.inputs[1 - index]
        if not _divisible(node.inputs[index], rank) or other.const_array is not None:
            continue
        if node.op_type == "Mul":
            return [Use(node, index)]
        if other.uses() == (Use(node, 1 - index),):  # Y feeds only this Add, and is no graph output
            inner = _absorbers(other, channels)
            return None if inner is None else [Use(node, index), *inner]
    return None


def _divisible(value: Value | None, rank: int | None) -> bool:
    """A float constant that c / s ([K]) leaves broadcasting to the same output shape."""
    data = value.const_array if value is not None else None
    if data is None or data.dtype.kind != "f":
        return False
    return data.ndim <= (rank if rank is not None else 1)


def _replace_constant(graph: Graph, names: NameAllocator, node: Node, index: int, data: np.ndarray) -> Value:
    """Input `index` of `node` reads a new initializer holding `data` (in the old dtype); the old goes when unread."""
    old = node.inputs[index]
    new = graph.add_constant(Value(names.fresh(f"{old.name}_smoothed"), const=data.astype(old.dtype.numpy)))
    node.set_input(index, new)
    graph.drop_unread_constants([old])
    return new


def _along(s: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """s shaped to broadcast along `axis` of an array of `ndim` dims."""
    return s.reshape([-1 if d == axis else 1 for d in range(ndim)])
