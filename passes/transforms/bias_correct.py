"""bias-correct: take out of each layer's bias the mean shift its int8 weights add to its output, per channel.

Rounding a weight W to int8 codes changes it by dW = W_q - W and the layer's output by
dW x. Over the data that error has a mean per output channel, dW E[x], which averaging
does not remove: post-ReLU inputs are all positive, so a row of dW whose sum is off
shifts the whole channel, and the next layer reads the shift as signal. A channel's
bias absorbs it exactly. Nagel et al., 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", with E[x] measured on the calibration data in place
of the BatchNorm statistics the paper reads.

1. Layers: every node that fold-weights will quantize (rules.plans: not kept float, so
   after assign-precision) with a constant float weight at input 1 and its activation
   at input 0: Conv ([C_out, C_in/group, k...]), Gemm (B as [K, N] or [N, K] with
   transB, A [M, K] or [K, M] with transA) and MatMul with a 2-D B [K, N]; not one whose
   `algorithms` mark leaves bias-correct out (overrides.py rule 4: `not_chosen`).
2. W_q is what fold-weights will store: its own `weight_axis`, `folded_params` and
   `quantize`, dequantized, with the options of the fold-weights step that
   follows in the pipeline (`ctx.following`, so a recipe's `[passes.fold-weights]`
   counts), its defaults when none follows; `node.meta["weight_scheme"]` wins as there,
   and reduce_range unset is the target's choice as there. So dW is exactly the error
   of the weights that will run.
3. E[x]: one ONNX Runtime pass over the calibration data (`samples=n`: whole batches
   until n rows) taps every layer's input. A Conv's input is averaged over the batch
   axis only, per position ([C_in, H, W], kept per spatial shape when samples differ),
   and the shift of output channel o is the mean over output positions of
   Conv(E[x], dW)[o], with the node's own pads, strides, dilations and group (ONNX
   Runtime on constants, one session for all layers). By linearity that is exactly the
   mean over the data of Conv(x, W_q) - Conv(x, W): the empirical per-layer correction,
   zero padding at the edges included. For Gemm and MatMul, E[x] is taken over every
   axis but the reduction one and shift = alpha E[x] dW.
4. The bias becomes b - shift, a new initializer (the old goes when unread): Conv's
   input 2 and Gemm's C (a float constant; Gemm divides by beta). Where there is none,
   one is created holding -shift (`biases_created`). A MatMul has no bias input: the
   shift goes into the constant operand (size N or 1) of an Add that alone reads it
   (fuse's `matmul-bias` group, where x is not 2-D); otherwise the layer is left
   uncorrected (`no_bias`). A bias that is not a constant is left too.
5. Not corrected: the mean error of the quantized activation (rounding is near zero
   mean; clipping by a percentile or entropy range is not), and what upstream layers'
   errors pass on: each layer is corrected for float inputs, as in the paper.
6. Order: the precisions it reads must be final, and fold-weights must find the
   corrected bias to store it as int32 at s_in * s_w: after calibrate (and
   assign-precision), before fold-weights (refused once weights are folded). Calibrated
   ranges stay right: they are those of the float model, which the corrected
   quantized model approximates better than before.
7. Measured in the int8 pipeline with `bias-correct` after calibrate, output SQNR on the
   evaluation data (ONNX Runtime): with full-range weights (AVX-512 VNNI) the gains are
   small, since 8-bit weights per output channel err little: golden/resnet_like 28.5 ->
   28.6 dB, digits_cnn 34.9 -> 35.0, unet_like 22.0 -> 22.2, mobilenet_like 15.8 -> 15.8
   (no gain); with 7-bit weights (reduce_range, x86 without VNNI) they grow: resnet_like
   25.9 -> 26.8, digits_cnn 33.1 -> 34.0. Where a Conv's input channels span 100x (the
   pointwise Convs of a depthwise net, tests/conv_nets.py), its weights carry the inverse
   spread, each row's scale is set by a few columns and the rest round coarsely: 7.0 ->
   16.2 dB, and 37.2 dB after equalize.
8. Stats: corrected, biases_created, exact (an all-zero shift: nothing changes), no_bias,
   weights_skipped (elided data). ctx.report["bias-correct"] holds them with the batches
   read and the time.

    const %b: f32[8]                            const %b_corrected: f32[8]        b - dW E[x]
    %y = Conv(%x, %w, %b)                 =>    %y = Conv(%x, %w, %b_corrected)
    %z = Conv(%y2, %w2)                         %z = Conv(%y2, %w2, %w2_bias)      -dW2 E[y2], created
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, TensorType, Value, evaluate
from qcompiler.ir.evaluate import first_rows, tap_groups
from qcompiler.ir.quant import dequantize, quantize

from ..analyses.observers import tapped_batches
from ..analyses.rules import QuantPlan, plans
from ..infra.base import Pass, PassError, register_pass
from ..infra.progress import SWITCH, Progress
from ..infra.target import weight_reduce_range
from .fold_weights import following_options, weight_for


@dataclass
class _Layer:
    """A layer to correct: its node, its quantized weight's error dW, and the mean of its input."""

    node: Node
    error: np.ndarray  # dW = W_q - W, in the weight's layout
    sums: dict[tuple, np.ndarray] = field(default_factory=dict)  # input shape key -> float64 sum
    rows: dict[tuple, int] = field(default_factory=dict)  # input shape key -> rows (vectors) summed

    @property
    def is_conv(self) -> bool:
        return self.node.op_type == "Conv"

    def add(self, x: np.ndarray) -> None:
        """One batch of the input: summed over the batch axis (Conv) or all but the reduction axis."""
        if self.is_conv:
            key, total, count = x.shape[1:], x.sum(axis=0, dtype=np.float64), x.shape[0]
        else:
            axis = self.reduction_axis(x.ndim)
            moved = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
            key, total, count = (), moved.sum(axis=0, dtype=np.float64), moved.shape[0]
        if key in self.sums:
            self.sums[key] += total
            self.rows[key] += count
        else:
            self.sums[key], self.rows[key] = total, count

    def reduction_axis(self, ndim: int) -> int:
        return 0 if self.node.op_type == "Gemm" and self.node.attr("transA", 0) else ndim - 1


@register_pass
class BiasCorrect(Pass):
    """Subtract from each layer's bias the mean output shift its int8 weights add (bias correction)."""

    name = "bias-correct"
    reads = frozenset({"quantize", "precision", "group", "weight_scheme", "algorithms"})
    algorithm = True
    refuses = frozenset({"weights-folded"})  # fold-weights stores the bias as int32: correct it before

    @dataclass
    class Options:
        """samples: rows of calibration data to average, in whole batches (0: all); memory_budget_mb:
        inputs held per batch before the layers are split into groups, each reading the data once;
        progress: a progress line (auto = on a terminal only)."""

        samples: int = 0
        memory_budget_mb: int = 1024
        progress: Literal["auto", "on", "off"] = "auto"

        def __post_init__(self) -> None:
            if self.samples < 0:
                raise ValueError(f"samples must be >= 0 (0: all), not {self.samples}")

    def requires(self, model: Model, ctx) -> None:
        if ctx.calibration_data is None:
            raise PassError("bias-correct measures the mean of each layer's input: it needs calibration data "
                            "(--calib DATA on the command line, or PassContext(calibration_data=...))")

    def run(self, model: Model, ctx) -> bool:
        start = time.perf_counter()
        fold = following_options(ctx.following)
        reduce_range = weight_reduce_range(fold.reduce_range, ctx)
        layers = []
        for node, plan in ctx.analysis("plans", lambda: plans(model)).items():
            layer = self._layer(node, plan, fold, reduce_range)
            if layer is not None:
                layers.append(layer)
        batches = self._measure(model, layers, ctx.calibration_data) if layers else 0
        names = NameAllocator(model.graph)
        for layer, shift in zip(layers, _shifts(model, layers)):
            self._correct(model.graph, names, layer.node, shift)
        ctx.report[self.name] = {
            **{key: self.stats[key] for key in ("corrected", "biases_created", "exact", "no_bias", "weights_skipped",
                                                 "not_chosen")},
            "batches": batches,
            "seconds": round(time.perf_counter() - start, 3),
        }
        return self.stats["corrected"] > 0

    def _layer(self, node: Node, plan: QuantPlan, fold, reduce_range: bool) -> _Layer | None:
        """The node as a layer to correct (rule 1), with its weight error (rule 2); None when it is not one."""
        found = weight_for(self, node, plan, fold, reduce_range, skipped="weights_skipped")
        if found is None:
            return None
        data, params = found
        error = dequantize(quantize(data, params), params) - data.astype(np.float32)
        return _Layer(node, error)

    def _measure(self, model: Model, layers: list[_Layer], data) -> int:
        """Rule 3: every layer's input summed over one pass of the data per tap group; the batches read."""
        def feeds():  # a fresh pass over the data each time it is read
            return first_rows(data, self.options.samples) if self.options.samples else data

        inputs = list(dict.fromkeys(layer.node.inputs[0] for layer in layers))
        readers = {value: [layer for layer in layers if layer.node.inputs[0] is value] for value in inputs}
        counted: list[int] = []
        for group in tap_groups(model, inputs, feeds(), self.options.memory_budget_mb << 20):
            tapped = [inputs[i] for i in group]
            progress = Progress(self.name, operator.length_hint(data) or None, "batches",
                                enabled=SWITCH[self.options.progress])
            for arrays in tapped_batches(model, tapped, feeds(), progress, count=counted):
                for value, array in zip(tapped, arrays):
                    for layer in readers[value]:
                        layer.add(np.asarray(array))
                del arrays, array  # before the next batch is run: one batch of activations at a time
        return counted[-1]

    def _correct(self, graph: Graph, names: NameAllocator, node: Node, shift: np.ndarray) -> None:
        """Rule 4: the bias (created where absent) less the shift."""
        if not np.isfinite(shift).all():
            raise PassError(f"node {node.name or node.op_type!r}: its mean output shift is not finite (the "
                            "calibration data holds NaN or Inf, or values past float32's range)")
        if not np.any(shift):  # weights exact in int8, or inputs all zero
            self.stats["exact"] += 1
            return
        if node.op_type == "MatMul":
            self._correct_following_add(graph, names, node, shift)
            return
        beta = node.attr("beta", 1.0) if node.op_type == "Gemm" else 1.0
        if beta == 0.0:  # C is read times 0: nothing to correct with
            self.stats["no_bias"] += 1
            return
        shift = shift / beta
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is None:
            created = Value(names.fresh(f"{node.inputs[1].name}_bias"), const=(-shift).astype(np.float32))
            graph.add_constant(created)
            if len(node.inputs) > 2:
                node.set_input(2, created)
            else:
                node.append_input(created)
            self.stats["biases_created"] += 1
            self.stats["corrected"] += 1
            return
        data = bias.const_array
        if data is None or data.dtype.kind != "f":
            self.stats["no_bias"] += 1
            return
        self._replace(graph, names, node, 2, data - shift.reshape(_bias_view(data, len(shift))).astype(data.dtype))

    def _correct_following_add(self, graph: Graph, names: NameAllocator, node: Node, shift: np.ndarray) -> None:
        """Rule 4 for a MatMul: the constant operand of the Add that alone reads it."""
        uses = node.outputs[0].uses()
        add = uses[0].user if len(uses) == 1 and isinstance(uses[0].user, Node) else None
        if add is None or add.op_type != "Add" or add.domain or len(add.inputs) != 2:
            self.stats["no_bias"] += 1
            return
        index = 1 - uses[0].index
        data = add.inputs[index].const_array if add.inputs[index] is not None else None
        if data is None or data.dtype.kind != "f" or data.size not in (1, len(shift)) or \
                data.shape[-1:] not in ((), (1,), (len(shift),)):
            self.stats["no_bias"] += 1
            return
        corrected = data - shift.reshape(_bias_view(data, len(shift))).astype(data.dtype)
        self._replace(graph, names, add, index, corrected)

    def _replace(self, graph: Graph, names: NameAllocator, node: Node, index: int, data: np.ndarray) -> None:
        old = node.inputs[index]
        new = graph.add_constant(Value(names.fresh(f"{old.name}_corrected"), const=data.astype(old.const_array.dtype)))
        node.set_input(index, new)
        graph.drop_unread_constants([old])
        self.stats["corrected"] += 1




def _bias_view(data: np.ndarray, channels: int) -> tuple[int, ...]:
    """The shape a shift of `channels` entries takes to subtract from a bias shaped like `data`."""
    return (*([1] * (data.ndim - 1)), channels) if data.ndim else (channels,)


def _shifts(model: Model, layers: list[_Layer]) -> list[np.ndarray]:
    """Each layer's mean output error per channel (rule 3), float64."""
    shifts: list[np.ndarray | None] = [None] * len(layers)
    probes: list[tuple[int, Value, int]] = []  # (layer, Conv(E[x], dW) output, rows * positions weight)
    scratch = Graph("bias_correct")
    for i, layer in enumerate(layers):
        if not layer.is_conv:
            mean = layer.sums[()] / layer.rows[()]
            node = layer.node
            error = layer.error.astype(np.float64)
            if node.op_type == "Gemm" and node.attr("transB", 0):
                error = error.T
            alpha = node.attr("alpha", 1.0) if node.op_type == "Gemm" else 1.0
            shifts[i] = alpha * (mean @ error)
            continue
        dw = scratch.add_constant(Value(f"dw{i}", const=layer.error.astype(np.float32)))
        for key, total in layer.sums.items():
            mean = scratch.add_constant(Value(f"mean{i}_{len(probes)}",
                                              const=(total / layer.rows[key])[None].astype(np.float32)))
            out = Value(f"out{i}_{len(probes)}", TensorType(DType.FLOAT, None))
            scratch.append(Node("Conv", [mean, dw], [out], attributes=dict(layer.node.attributes)))
            probes.append((i, out, layer.rows[key]))
    if probes:
        arrays = evaluate(list(scratch.nodes), [out for _, out, _ in probes], model.opset_imports, model.ir_version)
        totals: dict[int, tuple[np.ndarray, float]] = {}
        for (i, _, rows), array in zip(probes, arrays):
            positions = array[0].reshape(array.shape[1], -1)
            weight = rows * positions.shape[1]
            summed, weights = totals.get(i, (0.0, 0.0))
            totals[i] = (summed + weight * positions.mean(axis=1, dtype=np.float64), weights + weight)
        for i, (summed, weights) in totals.items():
            shifts[i] = summed / weights
    return shifts
