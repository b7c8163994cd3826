"""equalize: cross-layer equalization, balancing each channel's weight range between two Convs in a row.

Folding BatchNorm leaves a Conv's output channels with weight ranges that differ by 100x
and more (each channel carries its own BatchNorm scale; a depthwise filter has 9 weights
to average over), so the activation between two Convs, quantized with one scale per tensor, gives its small
channels a few codes. A positive per-channel scale moves freely across a ReLU, so it can
be taken out of one Conv's output channel and put into the next Conv's input channel:
the float function stays, the ranges even out. Nagel et al., 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"; no data is read.

1. A pair is Conv1 -> [act] -> Conv2 in the main graph, both Conv with constant float
   weights ([C_out, C_in/group, k...]), Conv1's bias absent or a 1-D float constant, and:
   Conv1's output read only by act (or only by Conv2, without an act), act's output only
   by Conv2, as its input 0; neither a graph output. act must be positively homogeneous,
   f(x / s) = f(x) / s for every s > 0: Relu, LeakyRelu, PRelu (any slope: it applies
   to the same sign). Relu6 and Clip (a fixed bound), HardSwish, HardSigmoid, Sigmoid,
   Tanh, Gelu are not, and end the pair, as does any op between the Convs. Any group
   works: Conv2 reads its input channel c through the filters of the output channels of
   group c // (C_in/group), at position c % (C_in/group), so a depthwise Conv2 (group =
   channels) reads channel c in filter c alone. A pair with a Conv whose `algorithms` mark
   leaves equalize out (overrides.py rule 4) is not one (`not_chosen`).
2. r1[c] = max |W1[c]| (output channel c of Conv1, all its weights) and r2[c] = max of
   |W2| over the weights reading input channel c. s[c] = sqrt(r1[c] r2[c]) / r2[c] =
   sqrt(r1[c] / r2[c]), clamped to [1e-4, 1e4]; s[c] = 1 where r1[c] or r2[c] is 0
   (a dead channel: nothing to balance).
3. W1[c] and b1[c] are divided by s[c], the weights of Conv2 reading channel c
   multiplied by it: both ranges become sqrt(r1[c] r2[c]). Conv2's bias stays. Each
   changed weight or bias is a new initializer (the old goes when unread), so a constant
   another op shares keeps its data.
4. Chains: a Conv that is Conv2 of one pair and Conv1 of the next sees its input
   channels scaled by the first and its output channels by the second, which moves the
   other's ranges. All pairs are equalized in turn, in rounds, until every s of a round
   is within `tolerance` of 1 (counted as `converged`) or after `rounds` rounds.
5. The float function is kept up to float rounding (tests: ONNX Runtime outputs before
   and after). The pass changes weights, so it runs after fuse (BatchNormalization
   folded into the Conv: an unfolded one between two Convs ends the pair) and before
   calibrate (refused once the model is calibrated, Q/DQ-placed or weights-folded).
6. Weights are quantized per output channel already, so Conv1's int8 weights are the
   same codes after equalization; what changes is the activation between the Convs (its
   channel c divided by s[c], towards one range) and Conv2's weights (input channel c
   multiplied by s[c]). So it pays where activation channels spread, and elsewhere can
   cost a little. Measured in the int8 pipeline with `equalize` after fuse, output SQNR
   on the evaluation data (ONNX Runtime, AVX-512 VNNI: full-range weights):
   golden/outlier_convnet (three channels 100x larger, 1 pair) -0.05 -> 32.0 dB; a
   depthwise-separable ReLU net whose channels span 100x (tests/conv_nets.py, 4 pairs)
   7.0 -> 36.9 dB; golden/unet_like (6 pairs) 22.0 -> 22.6 dB; golden/resnet_like
   (3 pairs) 28.5 -> 27.7 dB and golden/digits_cnn 34.9 -> 34.6 dB, a small loss;
   golden/mobilenet_like unchanged, as ReLU6 and HardSwish end every pair (0 pairs).
7. Stats: pairs, rounds, converged, weights_scaled, biases_scaled. ctx.report["equalize"]
   holds the pairs, the rounds, whether they converged and the largest scale moved
   (max(s, 1/s) of a channel's product of s over the rounds).

    %c1 = Conv(%x, %w1, %b1)                   %c1 = Conv(%x, %w1_equalized, %b1_equalized)    W1[c] / s[c]
    %r1 = Relu(%c1)                      =>    %r1 = Relu(%c1)
    %c2 = Conv(%r1, %w2, %b2) {group=1}        %c2 = Conv(%r1, %w2_equalized, %b2)             W2[:, c] * s[c]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.ir import Graph, Model, NameAllocator, Node, Value

from ..infra.base import Pass, PassError, register_pass
from ..infra.overrides import chosen

HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu"})  # f(x / s) = f(x) / s for s > 0 (rule 1)
_SCALE_LIMITS = (1e-4, 1e4)


@dataclass
class _Pair:
    """Two Convs whose channel c of the value between them can be rescaled (rule 1)."""

    first: Node
    second: Node


@register_pass
class Equalize(Pass):
    """Balance each channel's weight range between Convs in a row, through ReLUs (cross-layer equalization)."""

    name = "equalize"
    reads = frozenset({"algorithms"})
    algorithm = True
    refuses = frozenset({"calibrated", "qdq-placed", "weights-folded"})  # ranges and codes would be stale

    @dataclass
    class Options:
        """rounds: passes over all pairs at most (rule 4); tolerance: a round whose every
        scale is within it of 1 ends the rounds."""

        rounds: int = 10
        tolerance: float = 1e-3

        def __post_init__(self) -> None:
            if self.rounds < 1:
                raise ValueError(f"rounds must be at least 1, not {self.rounds}")
            if self.tolerance <= 0:
                raise ValueError(f"tolerance must be > 0, not {self.tolerance}")

    def requires(self, model: Model, ctx) -> None:
        if any(v.observed_range is not None for v in model.graph.all_values()):
            raise PassError("equalize changes weights, so the ranges calibration measured would be stale: "
                            "run it before calibrate")

    def run(self, model: Model, ctx) -> bool:
        graph = model.graph
        found = _pairs(graph)
        pairs = [pair for pair in found if chosen(pair.first, self.name) and chosen(pair.second, self.name)]
        self.stats["not_chosen"] += len(found) - len(pairs)
        self.stats["pairs"] += len(pairs)
        convs = list(dict.fromkeys(node for pair in pairs for node in (pair.first, pair.second)))
        weights = {node: node.inputs[1].const_array.astype(np.float64) for node in convs}  # rescaled in float64,
        biases = {pair.first: pair.first.inputs[2].const_array.astype(np.float64) for pair in pairs  # stored
                  if len(pair.first.inputs) > 2 and pair.first.inputs[2] is not None}  # once, at the end
        total = [np.ones(weights[pair.first].shape[0]) for pair in pairs]  # each channel's s over all rounds
        for _ in range(self.options.rounds if pairs else 0):
            self.stats["rounds"] += 1
            moved = 0.0
            for pair, applied in zip(pairs, total):
                first, second = pair.first, pair.second
                group = second.attr("group", 1)
                s = equalizing_scales(_output_ranges(weights[first]), _input_ranges(weights[second], group))
                weights[first] = weights[first] / _along(s, 0, weights[first].ndim)
                if first in biases:
                    biases[first] = biases[first] / s
                weights[second] = weights[second] * _input_channel_factors(weights[second], group, s)
                applied *= s
                moved = max(moved, float(np.max(np.abs(s - 1.0))))
            if moved < self.options.tolerance:
                self.stats["converged"] += 1
                break
        names = NameAllocator(graph)
        for node in convs:
            self._replace(graph, names, node, 1, weights[node])
            if node in biases:
                self._replace(graph, names, node, 2, biases[node])
        largest = max((float(np.max(np.maximum(s, 1.0 / s))) for s in total), default=1.0)
        ctx.report[self.name] = {"pairs": len(pairs), "not_chosen": self.stats["not_chosen"],
                                 "rounds": self.stats["rounds"], "converged": bool(self.stats["converged"]), "largest_scale": round(largest, 4)}
        return bool(pairs)

    def _replace(self, graph: Graph, names: NameAllocator, node: Node, index: int, data: np.ndarray) -> None:
        """Input `index` of `node` reads a new initializer holding `data` in the old dtype (rule 3)."""
        old = node.inputs[index]
        new = graph.add_constant(Value(names.fresh(f"{old.name}_equalized"), const=data.astype(old.const_array.dtype)))
        node.set_input(index, new)
        graph.drop_unread_constants([old])
        self.stats["weights_scaled" if index == 1 else "biases_scaled"] += 1


def equalizing_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """s = sqrt(r1 r2) / r2 per channel, clamped; 1 where either range is 0 (rule 2)."""
    r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
    live = (r1 > 0) & (r2 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(live, np.sqrt(r1 * r2) / r2, 1.0)
    return np.clip(s, *_SCALE_LIMITS)


def _output_ranges(w: np.ndarray) -> np.ndarray:
    """r1[c]: the largest |weight| of output channel c of a Conv weight [C_out, ...]."""
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _input_ranges(w: np.ndarray, group: int) -> np.ndarray:
    """r2[c]: the largest |weight| reading input channel c, whatever the group (rule 1)."""
    w = np.abs(w)
    per_filter = w.reshape(w.shape[0], w.shape[1], -1).max(axis=2)  # [C_out, C_in/group]
    grouped = per_filter.reshape(group, w.shape[0] // group, w.shape[1]).max(axis=1)  # [group, C_in/group]
    return grouped.reshape(-1)


def _input_channel_factors(w: np.ndarray, group: int, s: np.ndarray) -> np.ndarray:
    """s laid out over W2: entry [o, j, ...] reads input channel (o // (C_out/group)) * (C_in/group) + j."""
    out_per_group, in_per_group = w.shape[0] // group, w.shape[1]
    channel = (np.arange(w.shape[0])[:, None] // out_per_group) * in_per_group + np.arange(in_per_group)[None, :]
    return s[channel].reshape(*channel.shape, *([1] * (w.ndim - 2)))


def _pairs(graph: Graph) -> list[_Pair]:
    """Every Conv1 -> [act] -> Conv2 pair of rule 1, in graph order."""
    found = []
    for node in graph.nodes:
        reader = _only_reader(node.outputs[0]) if _conv_with_constants(node) else None
        if reader is None:
            continue
        between = node.outputs[0]
        if reader.op_type in HOMOGENEOUS and not reader.domain and reader.inputs[0] is between:
            between = reader.outputs[0]
            reader = _only_reader(between)
        if reader is None or not _conv_with_constants(reader) or reader.inputs[0] is not between:
            continue
        channels = node.inputs[1].const_array.shape[0]
        out_channels, in_per_group = reader.inputs[1].const_array.shape[:2]
        group = reader.attr("group", 1)
        if in_per_group * group == channels and out_channels % group == 0:
            found.append(_Pair(node, reader))
    return found


def _conv_with_constants(node: Node) -> bool:
    """A Conv whose weight is a float constant of rank >= 3 and whose bias is absent or a 1-D float constant."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return False
    w = node.inputs[1].const_array if node.inputs[1] is not None else None
    if w is None or w.dtype.kind != "f" or w.ndim < 3:
        return False
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is None:
        return True
    data = bias.const_array
    return data is not None and data.dtype.kind == "f" and data.shape == (w.shape[0],)


def _only_reader(value: Value) -> Node | None:
    """The one node reading `value`, at one input, when nothing else (a graph output) does."""
    uses = value.uses()
    return uses[0].user if len(uses) == 1 and isinstance(uses[0].user, Node) else None


def _along(s: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """s shaped to broadcast along `axis` of an array of `ndim` dims."""
    return s.reshape([-1 if d == axis else 1 for d in range(ndim)])
