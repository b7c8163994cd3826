"""Learning each layer's int8 weights on its own inputs, one layer at a time: what adaround and
adaquant share, so that they differ only in what they learn (`LayerwisePass.learn`).

1. Layers: those bias-correct corrects (its rule 1): every Conv, Gemm and MatMul that
   fold-weights will quantize, with a constant float weight at input 1 (`folded_weight`).
   Kept float (rules.float_by_choice, precision marks) means not planned, so not touched;
   nor is a node whose `algorithms` mark leaves the pass out (overrides.py rule 4: `not_chosen`).
   A weight whose data is elided is counted `skipped`; a Conv with auto_pad is not taken.
2. Parameters: those fold-weights will store the weight with (`folded_params` with the
   options of the fold-weights step that follows, as bias-correct reads them).
3. Kept rows: `samples` per layer, the first ones read in one ONNX Runtime pass over the
   calibration data (`tapped_batches`, the float model's values): images for a Conv,
   vectors (input rows along the reduction axis) for Gemm and MatMul, so memory stays bounded.
4. The op in torch on CPU, without its bias: a function of (input rows, weight) with the
   node's pads, strides, dilations and group, Gemm's alpha and transB; on one thread, since
   one step of one layer is too small to split, and threads spinning for a core that other
   work holds made steps 100x slower (44 ms against 0.1 ms for a 32 x 48 x 6 Gemm on 2 busy cores).
5. `time_budget_s` bounds the whole pass: layers not finished when it runs out keep their
   weights (`left`). A layer whose learned weights err more than round-to-nearest on the
   kept rows keeps its weights (`no_gain`).
6. What a layer learned is written as new initializers: the weight as `<weight>_<pass>`, and
   a bias change per output channel, when learned, into Conv's bias or Gemm's C (divided
   by beta) as `<bias>_<pass>`, created where the node has none.
7. ctx.report[<pass>]: done, no_gain, skipped, left, seconds, and per layer the mean
   squared output error on the kept rows with round-to-nearest (`rtn`) and after (`<pass>`),
   with the figures the pass adds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from qcompiler.ir import Model, NameAllocator, Node, QuantParams, Value
from qcompiler.ir.evaluate import first_rows

from ..analyses.observers import tapped_batches
from ..analyses.rules import plans
from ..infra.base import Pass, PassError
from ..infra.progress import SWITCH, Progress
from ..infra.target import weight_reduce_range
from .fold_weights import FoldWeights, folded_params, following_options, weight_for

BATCH = 32  # rows per Adam step


@dataclass
class LayerwiseOptions:
    """iterations: Adam steps per layer; samples: input rows kept per layer (images for a Conv,
    vectors for Gemm/MatMul); time_budget_s: for the whole pass, layers left keep their weights;
    progress: a progress line."""

    iterations: int = 500
    samples: int = 256
    time_budget_s: float = 300.0
    progress: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, not {self.iterations}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, not {self.samples}")
        if self.time_budget_s < 0:
            raise ValueError(f"time_budget_s must be >= 0, not {self.time_budget_s}")


@dataclass
class Layer:
    """A layer to learn: its node, float weight, the parameters fold-weights will use, its kept inputs."""

    node: Node
    weight: np.ndarray
    params: QuantParams
    fold: FoldWeights.Options
    reduce_range: bool
    rows: list[np.ndarray] = field(default_factory=list)
    kept: int = 0

    def keep(self, x: np.ndarray, limit: int) -> None:
        """Rule 3: rows of one batch until `limit` are kept."""
        if self.kept >= limit:
            return
        if self.node.op_type != "Conv":
            axis = 0 if self.node.op_type == "Gemm" and self.node.attr("transA", 0) else x.ndim - 1
            x = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        taken = x[: limit - self.kept].astype(np.float32)
        self.rows.append(taken)
        self.kept += len(taken)

    def folded_params(self, weight: np.ndarray) -> QuantParams:
        """The parameters fold-weights will store `weight` with, in this layer's place (rule 2)."""
        return folded_params(weight, self.params.axis, self.fold, self.reduce_range)

    @property
    def output_axis(self) -> int:
        """The axis of the op's output channels in `forward`'s result."""
        return 1 if self.node.op_type == "Conv" else -1

    def takes_bias(self) -> bool:
        """Whether a bias change can be written (rule 6): a Conv, a Gemm with beta != 0 and a C that is
        absent or a float constant of one entry per output channel."""
        if self.node.op_type not in ("Conv", "Gemm") or self.node.attr("beta", 1.0) == 0.0:
            return False
        bias = self.node.inputs[2] if len(self.node.inputs) > 2 else None
        if bias is None:
            return True
        data = bias.const_array
        channels = self.weight.shape[0 if self.node.op_type == "Conv" or self.node.attr("transB", 0) else 1]
        return data is not None and data.dtype.kind == "f" and data.size == channels and data.ndim <= 2


@dataclass
class Learned:
    """What a layer learned: the weight to write, a bias change per output channel (or None), the mean
    squared output error on the kept rows with round-to-nearest and with what was learned, and the
    pass's own figures for the report."""

    weight: np.ndarray
    bias: np.ndarray | None
    before: float
    after: float
    figures: dict[str, float] = field(default_factory=dict)


class LayerwisePass(Pass):
    """The driver of rules 1-7; a subclass says what a layer learns (`learn`)."""

    reads = frozenset({"quantize", "precision", "group", "weight_scheme", "algorithms"})
    algorithm = True
    needs = frozenset({"calibrated"})
    refuses = frozenset({"qdq-placed", "weights-folded"})  # fold-weights stores the codes: learn them before
    learns = ""  # what, for the message when calibration data is missing

    def requires(self, model: Model, ctx) -> None:
        if ctx.calibration_data is None:
            raise PassError(f"{self.name} learns {self.learns} on its inputs: it needs calibration data "
                            "(--calib DATA on the command line, or PassContext(calibration_data=...))")

    def prepare(self, model: Model, ctx, fold: FoldWeights.Options) -> None:
        """What the pass reads of the model before any layer learns; nothing by default."""

    def learn(self, torch, layer: Layer, deadline: float) -> Learned | None:
        """What `layer` learns on its kept rows; None when the deadline passed first."""
        raise NotImplementedError

    def run(self, model: Model, ctx) -> bool:
        start = time.perf_counter()
        deadline = start + self.options.time_budget_s
        fold = following_options(ctx.following)
        reduce_range = weight_reduce_range(fold.reduce_range, ctx)
        self.prepare(model, ctx, fold)
        layers = []
        for node, plan in ctx.analysis("plans", lambda: plans(model)).items():
            layer = self._layer(node, plan, fold, reduce_range)
            if layer is not None:
                layers.append(layer)
        errors: dict[str, dict[str, float]] = {}
        if layers and time.perf_counter() < deadline:
            torch = _torch(self.name)
            self._read_inputs(model, layers, ctx.calibration_data)
            names = NameAllocator(model.graph)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # rule 4: a layer's steps are too small to share; threads waiting on a busy core cost 100x
            try:
                for layer in layers:
                    learned = self.learn(torch, layer, deadline) if time.perf_counter() < deadline else None
                    if learned is None:
                        self.stats["left"] += 1
                        continue
                    errors[layer.node.name or layer.node.op_type] = {"rtn": learned.before, self.name: learned.after,
                                                                     **learned.figures}
                    if learned.after >= learned.before:
                        self.stats["no_gain"] += 1
                        continue
                    self._write(model, names, layer, learned)
            finally:
                torch.set_num_threads(threads)
        else:
            self.stats["left"] += len(layers)
        ctx.report[self.name] = {
            **{key: self.stats[key] for key in ("done", "no_gain", "skipped", "left", "not_chosen")},
            "seconds": round(time.perf_counter() - start, 3),
            "layers": errors,
        }
        return self.stats["done"] > 0

    def _layer(self, node: Node, plan, fold: FoldWeights.Options, reduce_range: bool) -> Layer | None:
        """Rules 1 and 2: the node as a layer to learn, None when it is not one."""
        if node.op_type == "Conv" and node.attr("auto_pad", "NOTSET") != "NOTSET":
            return None
        found = weight_for(self, node, plan, fold, reduce_range)
        if found is None:
            return None
        data, params = found
        return Layer(node, data.astype(np.float32), params, fold, reduce_range)

    def _read_inputs(self, model: Model, layers: list[Layer], data) -> None:
        """Rule 3: the first `samples` rows of each layer's float input, from one pass over the data."""
        inputs = list(dict.fromkeys(layer.node.inputs[0] for layer in layers))
        progress = Progress(self.name, None, "batches", enabled=SWITCH[self.options.progress])
        for arrays in tapped_batches(model, inputs, first_rows(data, self.options.samples), progress):
            for value, array in zip(inputs, arrays):
                for layer in layers:
                    if layer.node.inputs[0] is value:
                        layer.keep(np.asarray(array), self.options.samples)
            del arrays

    def _write(self, model: Model, names: NameAllocator, layer: Layer, learned: Learned) -> None:
        """Rule 6: the learned weight, and the bias changed by what was learned, as new initializers."""
        node, graph = layer.node, model.graph
        old = node.inputs[1]
        new = graph.add_constant(Value(names.fresh(f"{old.name}_{self.name}"),
                                       const=learned.weight.astype(old.const_array.dtype)))
        node.set_input(1, new)
        graph.drop_unread_constants([old])
        if learned.bias is not None:
            change = learned.bias / (node.attr("beta", 1.0) if node.op_type == "Gemm" else 1.0)
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            data = bias.const_array if bias is not None else np.zeros(len(change), np.float32)
            name = bias.name if bias is not None else f"{old.name}_bias"
            value = graph.add_constant(Value(names.fresh(f"{name}_{self.name}"),
                                             const=(data + change.reshape(data.shape)).astype(data.dtype)))
            if len(node.inputs) > 2:
                node.set_input(2, value)
            else:
                node.append_input(value)
            if bias is not None:
                graph.drop_unread_constants([bias])
        self.stats["done"] += 1


def _torch(name: str):
    try:
        import torch
    except ImportError:
        raise PassError(f"{name} learns with torch, which is not installed: pip install \"qcompiler[torch]\"") from None
    return torch


def broadcast(array: np.ndarray, axis: int | None, shape: tuple[int, ...]) -> np.ndarray:
    """Per-channel parameters shaped to broadcast against a weight of `shape` (a scalar per tensor)."""
    if axis is None:
        return np.asarray(array, dtype=np.float32)
    view = [1] * len(shape)
    view[axis % len(shape)] = -1
    return np.asarray(array, dtype=np.float32).reshape(view)


def forward(torch, node: Node):
    """Rule 4: the layer without its bias as a torch function of (input rows, weight)."""
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
