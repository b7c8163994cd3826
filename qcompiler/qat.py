"""Quantization-aware training with the compiler's own placement, and export of the trained module.

1. `prepare_qat(module, example_inputs)` exports the module (`compiler.prepare`: the torch
   front end, the recipe's overrides and pass options), runs canonicalize, fuse and
   insert-observers, and reads the plans (passes/analyses/rules.py): the activation values that get
   parameters, the value whose parameters each one follows, and the weights quantized,
   with their channel axis. Those decisions go back onto a copy of the module by module
   path (`node.meta["module"]`); the module passed in is not changed.
2. Activations: each quantized value gets one `ActivationQuant` (uint8, asymmetric, per
   tensor: place-qdq's default on ort-cpu), placed on the output of the module the value
   leaves (a Conv, a ReLU ending a fused Conv+ReLU group, a Linear), or else on the input
   of every module reading it (a graph input reaches the first Conv that way). A module is
   wrapped in `Quantized` for that, so its path gains `.module`. A value that follows
   another (a MaxPool or Flatten output follows the ReLU before it) applies its leader's
   parameters without observing, as place-qdq gives it the leader's scale.
3. Weights: each planned weight (found as the torch parameter of the same name or the
   node's module's `weight`, and equal to it or to its transpose) gets a `WeightQuant`
   parametrization: symmetric int8 on the plan's axis, per tensor where fold-weights
   would store it so (`per_channel=false`, a `scheme` override), with fold-weights'
   `reduce_range` as compile resolves it (the recipe, else the target's `reduce_range`).
4. Ranges: an ActivationQuant starts at its first batch in train mode and then follows a
   moving average of batch minima and maxima (`averaging_constant`, as torch's
   MovingAverageMinMaxObserver); eval mode only applies it. A WeightQuant takes its scales
   from the weight on every eager forward. Parameters come from `QuantParams.from_range`
   and fold-weights' own formula, so they are those compile would compute from the same
   ranges. Gradients pass straight through the rounding (torch's fake-quant ops).
5. Not mirrored (listed in `prepared.qat_plan.not_mirrored`, warned about; compile
   calibrates those values): values whose module cannot be told (made or read by the
   root module's own code, by a module called more than once, or by a module with several
   inputs or outputs); weights that are not a parameter as they are (a BatchNorm folded
   into its Conv by fuse: fold it into the Conv before preparing); a recipe's activation
   dtype (int8/int16 activations) or mixed-precision levels; the int32 rounding of biases
   (their scale s_in * s_w makes it negligible). Dropout stays where the module has it.
6. `export_qat(module, example_inputs)` refreshes the weight scales from the final
   weights, exports the module (each fake-quant becomes a QuantizeLinear/DequantizeLinear
   pair: the dynamo exporter through torch's ONNX op library, the classic one from opset
   13) and folds every QuantizeLinear of constants into its codes
   (fold-weights' `fold_quantized_constants`), so weights are int8 initializers behind a
   DequantizeLinear carrying the learned scale. torch has no shape kernels for its
   fake-quant ops, which torch.export needs for a symbolic (dynamic) dim: export_qat
   registers them for the duration of the export.
7. `qcompiler.compile(model, on_quantized="keep", reference=FLOAT)` keeps every pair, so
   the learned scales are the ones emitted, and fold-weights turns the float biases into
   int32 at s_in * s_w; ONNX Runtime then runs QLinearConv/QGemm. It needs no calibration
   data when every quantized value arrives with its pair (insert-observers skips kept
   pairs); `reference` validates against the float model. torch rounds
   x * (1 / scale) where QuantizeLinear divides: a weight at a channel's extreme (code
   63.5 with reduce_range) may be one code apart between training and the model.

    prepared module                                   export_qat
    net.0: Quantized(Conv2d, input=x)                 x -> Q -> DQ -> Conv(DQ(w_int8), b) -> Relu
           weight: WeightQuant(axis=0)                  -> Q -> DQ -> MaxPool -> Q -> DQ -> ...
    net.1: Quantized(ReLU, output=relu)               (MaxPool's pair reuses relu's scale and zero point)
    net.4: Quantized(MaxPool2d, output follows relu)
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from qcompiler import ir, passes
from qcompiler import torch as torch_frontend
from qcompiler.compiler import prepare
from qcompiler.ir import DType, QuantParams, Value
from qcompiler.passes.transforms.fake_quant import fold_quantized_constants
from qcompiler.passes.infra.pipeline import Pipeline
from qcompiler.passes.infra.target import weight_reduce_range
from qcompiler.passes.analyses.rules import (
    float_by_choice,
    plans,
    quantized_values,
)
from qcompiler.passes.transforms.weight_quant import weight_params
from qcompiler.recipe import Recipe

_PLACEMENT = "legalize-opset,freeze-weight-inputs,apply-overrides,canonicalize,fuse,insert-observers"
_ACTIVATION_RANGE = (0, 255)  # uint8, what place-qdq gives activations on ort-cpu
_WEIGHT_RANGE = (-128, 127)  # int8; symmetric scales keep codes within [-127, 127]


def _eager() -> bool:
    """Running in eager mode: not traced by an exporter, so ranges and scales may update."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())


class ActivationQuant(nn.Module):
    """uint8 asymmetric per-tensor fake quantization with a moving-average range (rule 4)."""

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        self.averaging_constant = averaging_constant
        self.register_buffer("range", torch.tensor([math.inf, -math.inf]))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    @property
    def observed(self) -> bool:
        return bool(torch.isfinite(self.range).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _eager():
            self.observe(x)
        return self.apply_to(x)

    def apply_to(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize `x` with the current parameters (identity before any batch was seen)."""
        if _eager() and not self.observed:
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, *_ACTIVATION_RANGE)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        batch = torch.stack([x.min(), x.max()]).float()
        self.range.copy_(torch.lerp(self.range, batch, self.averaging_constant) if self.observed else batch)
        lo, hi = self.range.tolist()
        params = QuantParams.from_range(lo, hi, DType.UINT8, symmetric=False)
        self.scale.fill_(float(params.scale))
        self.zero_point.fill_(int(params.zero_point))


class Follow(nn.Module):
    """Applies a leader's parameters without observing: the value lies within the leader's range."""

    def __init__(self, leader: ActivationQuant) -> None:
        super().__init__()
        self.leader = leader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.leader.apply_to(x)


class WeightQuant(nn.Module):
    """Symmetric int8 fake quantization of a weight, per channel along `axis` (per tensor when None)."""

    def __init__(self, weight: torch.Tensor, axis: int | None, reduce_range: bool) -> None:
        super().__init__()
        self.axis, self.reduce_range = axis, reduce_range
        channels = () if axis is None else (weight.shape[axis],)
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))
        self.refresh(weight)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if _eager():
            self.refresh(weight)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(weight, self.scale, self.zero_point, *_WEIGHT_RANGE)
        return torch.fake_quantize_per_channel_affine(weight, self.scale, self.zero_point, self.axis, *_WEIGHT_RANGE)

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor) -> None:
        """The scales fold-weights would give this weight."""
        params = weight_params(weight.detach().float().cpu().numpy(), self.axis, DType.INT8, True,
                               self.reduce_range)
        self.scale.copy_(torch.from_numpy(params.scale))


class Quantized(nn.Module):
    """`module` with fake quantization on its (first tensor) input and/or its output."""

    def __init__(self, module: nn.Module, input_quant: nn.Module | None = None,
                 output_quant: nn.Module | None = None) -> None:
        super().__init__()
        self.module, self.input_quant, self.output_quant = module, input_quant, output_quant

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = self.module(x, *args, **kwargs)
        return y if self.output_quant is None else self.output_quant(y)


@dataclass
class QatPlan:
    """What prepare_qat mirrored: value name -> where its fake quantization sits ("output of net.1"),
    weight parameter -> its channel axis (None: per tensor), and what it could not mirror and why."""

    activations: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int | None] = field(default_factory=dict)
    not_mirrored: list[str] = field(default_factory=list)


def prepare_qat(module: nn.Module, example_inputs: Any, recipe: Recipe | str | Path | dict | None = None, *,
                dynamic_shapes: Any = None) -> nn.Module:
    """A copy of `module` with fake quantization where compile would quantize (rules 1-3, 5).

    The copy carries `qat_plan` (a QatPlan). Fine-tune it in train mode, then `export_qat`.
    """
    job = prepare(module, recipe=recipe, pipeline=f"{_PLACEMENT},fold-weights", example_inputs=example_inputs,
                  dynamic_shapes=dynamic_shapes)
    *placement, fold_step = job.steps.steps
    context = job.context([])
    passes.PassManager(Pipeline(placement, _PLACEMENT)).run(job.model, context)
    fold = fold_step.instantiate(str(job.steps)).options
    prepared = copy.deepcopy(module)
    plan = QatPlan()
    _mirror_weights(job.model, prepared, fold.per_channel, weight_reduce_range(fold.reduce_range, context), plan)
    _mirror_activations(job.model, prepared, plan)
    if plan.not_mirrored:
        warnings.warn("prepare_qat: not mirrored, compile will calibrate these instead: "
                      + "; ".join(plan.not_mirrored), stacklevel=2)
    prepared.qat_plan = plan
    return prepared


def export_qat(module: nn.Module, example_inputs: Any, *, dynamic_shapes: Any = None,
               exporter: str = "dynamo") -> ir.Model:
    """The fine-tuned module as a QDQ model with int8 weights and the learned scales (rule 6)."""
    unseen = [name for name, m in module.named_modules() if isinstance(m, ActivationQuant) and not m.observed]
    if unseen:
        raise ValueError(f"export_qat: {', '.join(unseen)} never saw a batch in train mode; fine-tune (or run "
                         "a few batches in train mode) before exporting")
    for owner in module.modules():
        for stack in getattr(owner, "parametrizations", {}).values():
            for step in stack:
                if isinstance(step, WeightQuant):
                    step.refresh(stack.original)  # the last optimizer step came after the last forward
    with _fake_quant_shapes():
        model = torch_frontend.export(module, example_inputs, dynamic_shapes=dynamic_shapes, exporter=exporter)
    passes.PassManager("canonicalize").run(model, passes.PassContext())
    fold_quantized_constants(model)
    return model


_CACHEMASK_OPS = ("_fake_quantize_per_tensor_affine_cachemask_tensor_qparams",
                  "fake_quantize_per_tensor_affine_cachemask", "fake_quantize_per_channel_affine_cachemask")


@contextlib.contextmanager
def _fake_quant_shapes() -> Iterator[None]:
    """Shape (Meta) kernels for torch's fake-quant ops while exporting: torch.export computes output
    shapes with them, and torch has none, so a symbolic batch dim fails without (rule 6)."""
    library = torch.library.Library("aten", "IMPL")
    for name in _CACHEMASK_OPS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "Meta"):
            library.impl(name, _cachemask_shapes, "Meta")
    try:
        yield
    finally:
        library._destroy()


def _cachemask_shapes(x: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


def _mirror_weights(model: ir.Model, module: nn.Module, per_channel: bool, reduce_range: bool,
                    plan: QatPlan) -> None:
    """A WeightQuant parametrization on each planned weight's parameter (rule 3)."""
    parameters = dict(module.named_parameters())
    done: set[str] = set()
    for node, node_plan in plans(model).items():
        scheme = node.meta.get("weight_scheme")
        chosen = per_channel if scheme is None else scheme == "per-channel"
        for weight in node_plan.weights:
            value = node.inputs[weight.input]
            found = _parameter(value, node, module, parameters)
            if found is None:
                plan.not_mirrored.append(f"weight %{value.name} of {node.name}: no parameter holds it as it is")
                continue
            name, transposed = found
            if name in done:
                continue
            axis = None if not chosen or weight.axis is None else (1 - weight.axis if transposed else weight.axis)
            owner_path, _, attribute = name.rpartition(".")
            owner = module.get_submodule(owner_path)
            parametrize.register_parametrization(owner, attribute,
                                                 WeightQuant(getattr(owner, attribute), axis, reduce_range))
            plan.weights[name] = axis
            done.add(name)


def _parameter(value: Value, node: ir.Node, module: nn.Module,
               parameters: dict[str, nn.Parameter]) -> tuple[str, bool] | None:
    """(name of the parameter holding `value`, whether transposed): the parameter of the same
    name, else the node's module's `weight`, when equal to the constant or to its transpose."""
    data = value.const if isinstance(value.const, np.ndarray) else None
    path = node.meta.get("module")
    candidates = [value.name] + ([f"{path}.weight" if path else "weight"] if isinstance(path, str) else [])
    for name in candidates:
        parameter = parameters.get(name)
        if parameter is None or data is None:
            continue
        array = parameter.detach().cpu().numpy()
        if array.shape == data.shape and np.array_equal(array, data):
            return name, False
        if array.ndim == 2 and array.T.shape == data.shape and np.array_equal(array.T, data):
            return name, True
    return None


def _mirror_activations(model: ir.Model, module: nn.Module, plan: QatPlan) -> None:
    """An ActivationQuant (or a Follow of its leader's) per quantized value, wrapped around modules (rule 2)."""
    leaving, entering = _boundaries(model.graph)
    quants: dict[Value, ActivationQuant] = {}
    wraps: dict[str, dict[str, nn.Module]] = defaultdict(dict)  # module path -> {"input"/"output": quant}
    leaders = quantized_values(model)
    kept_float = float_by_choice(model)
    for value, leader in sorted(leaders.items(), key=lambda item: item[0] is not item[1]):  # leaders first
        readers = value.consumers()
        if readers and not value.is_graph_output() and all(n in kept_float for n in readers):
            continue  # only nodes an override keeps float read it: place-qdq gives it no pair
        sites = _sites(value, leaving, entering)
        if sites is None or (leader is not value and leader not in quants):
            why = "its module cannot be told" if sites is None else f"its leader %{leader.name} is not mirrored"
            plan.not_mirrored.append(f"%{value.name}: {why}")
            continue
        if leader is value:
            quants[value] = ActivationQuant()
        quant = quants[value] if leader is value else Follow(quants[leader])
        for path, side in sites:
            wraps[path][side] = quant
        plan.activations[value.name] = ", ".join(f"{side} of {path}" for path, side in sites)
    for path, sides in sorted(wraps.items(), key=lambda item: -item[0].count(".")):  # inner modules first
        parent_path, _, name = path.rpartition(".")
        parent = module.get_submodule(parent_path)
        setattr(parent, name, Quantized(getattr(parent, name), sides.get("input"), sides.get("output")))


def _sites(value: Value, leaving: dict[str, set[Value]],
           entering: dict[str, set[Value]]) -> list[tuple[str, str]] | None:
    """Where `value`'s fake quantization goes: the output of the one module it leaves as that module's
    only output, else the input of each module reading it as its only input; None when neither."""
    made_in = _path(value.producer)
    if made_in and leaving[made_in] == {value}:
        return [(made_in, "output")]
    sites = []
    for reader in value.consumers():
        path = _path(reader)
        if not path or entering[path] != {value}:
            return None
        sites.append((path, "input"))
    return list(dict.fromkeys(sites)) or None


def _boundaries(graph: ir.Graph) -> tuple[dict[str, set[Value]], dict[str, set[Value]]]:
    """Module path -> the values leaving it (read outside it or a graph output), and -> those entering
    it (made outside it, constants aside). The root module ("") never counts as a place to wrap."""
    leaving: dict[str, set[Value]] = defaultdict(set)
    entering: dict[str, set[Value]] = defaultdict(set)
    values = [*graph.inputs, *(v for node in graph.nodes for v in node.outputs)]
    for value in values:
        inside = _ancestors(_path(value.producer))
        for reader in value.consumers():
            around = _ancestors(_path(reader))
            for path in inside - around:
                leaving[path].add(value)
            if not value.is_const:
                for path in around - inside:
                    entering[path].add(value)
        if value.is_graph_output():
            for path in inside:
                leaving[path].add(value)
    return leaving, entering


def _path(node: ir.Node | None) -> str | None:
    path = node.meta.get("module") if node is not None else None
    return path if isinstance(path, str) else None


def _ancestors(path: str | None) -> set[str]:
    """'net.0' -> {'net', 'net.0'}: the modules a node of that path runs in, the root left out."""
    if not path:
        return set()
    parts = path.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
