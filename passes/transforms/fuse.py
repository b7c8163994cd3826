"""fuse: fold BatchNormalization and biases into their producers, group ops quantized as one.

1. conv-bn, convtranspose-bn: BatchNormalization(Conv(x, w, b)) is Conv(x, w', b') with
   s = scale / sqrt(var + eps), w' = w * s per output channel (axis 0 for Conv; for
   ConvTranspose, weight [Cin, Cout/group, ...], axis 1 within each group) and
   b' = (b - mean) * s + bias (b = 0 when the Conv has none).
2. gemm-bias: Gemm(a, b[, C]) + bias is Gemm(a, b, beta*C + bias) {beta=1}, when the bias
   is constant, varies at most along the last dim and C is absent or constant.
   matmul-bias: MatMul(x, W) + bias with W a 2-D constant is Gemm(x, W, bias) when x is
   2-D; otherwise the MatMul and the Add are grouped.
3. conv-act, convtranspose-act, gemm-act, matmul-act, add-act: an op whose only reader is
   an activation (Relu, Clip with constant bounds, LeakyRelu, Sigmoid, HardSigmoid,
   HardSwish) is grouped with it; an op already in a group brings the activation in.
   With `activations=target` (the default) only activations the target's integer
   kernels absorb (`ctx.target.absorbed`) are grouped: on ort-cpu Relu and Clip, which
   ONNX Runtime folds into the QuantizeLinear after a QLinearConv. A HardSwish grouped there would leave the
   Conv without a QuantizeLinear on its output, and ONNX Runtime would run it in float.
4. layernorm: the decomposed LayerNorm (ReduceMean, Sub, Pow 2 or Mul by itself,
   ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta; both means over the same
   trailing axes) becomes LayerNormalization at opset >= 17, else its nodes are grouped.
5. gelu: x * 0.5 * (1 + Erf(x / sqrt(2))) and the tanh approximation, in any operand
   order, become Gelu {approximate="none"/"tanh"} at opset >= 20, else are grouped.

Fusion never fires when an intermediate value has readers outside the pattern or is a
graph output. Grouping moves nothing: the nodes get the same `meta["group"]`, a
`<pattern>#<n>` label, and later passes put no Q/DQ pair inside a group. A fused node
keeps the name and meta of the main node it replaces and the name of the value it
replaces, so graph outputs keep their names.

    x ── Conv(w, b) ── BatchNormalization(scale, bias, mean, var) ── y
                                                                        =>   x ── Conv(w', b') ── y

    x ── MatMul(W) ── Add(bias) ── Relu ── y   =>   x ── Gemm(W, bias) ── Relu ── y
                                                          [gemm-act#0 ............]
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcompiler.ir import Graph, Model, NameAllocator, Node, Value

from ..infra.base import Pass, register_pass
from .patterns import (
    Any, Const, Either, Match, Op, Optional, Pattern, apply_patterns, not_graph_output,
    replace_root, used_only_inside,
)
from ..infra.target import FUSABLE_ACTIVATIONS

_INTERNAL = (used_only_inside, not_graph_output)


class _Env:
    """What rewrites need besides the match: the opset, and names and labels still free.

    One name allocator serves the run: a scan of the model per new constant made
    folding 2000 BatchNorms take half a minute.
    """

    def __init__(self, model: Model, activations: tuple[str, ...] = FUSABLE_ACTIVATIONS) -> None:
        self.opset = model.opset
        self.activations = activations
        self.names = NameAllocator(model.graph)
        self.labels = {n.meta.get("group") for n in model.graph.all_nodes()}
        self.next_label: Counter[str] = Counter()

    def constant(self, graph: Graph, hint: str, data: np.ndarray) -> Value:
        """A new initializer named `hint`, or `hint_<n>` when that is taken."""
        return graph.add_constant(Value(self.names.fresh(hint), const=data))

    def group(self, pattern: str, nodes: tuple[Node, ...]) -> bool:
        """Label `nodes` as one group: the label one of them has, else a new `<pattern>#<n>`."""
        label = next((n.meta["group"] for n in nodes if "group" in n.meta), None)
        if label is None:
            while (label := f"{pattern}#{self.next_label[pattern]}") in self.labels:
                self.next_label[pattern] += 1
            self.labels.add(label)
        for node in nodes:
            node.meta["group"] = label
        return True


def _ungrouped(match: Match) -> bool:
    return not any("group" in n.meta for n in match.nodes)


# -- conv-bn, convtranspose-bn ---------------------------------------------------------


def _conv_bn(op_type: str) -> Op:
    conv = Op(op_type, Any("x"), Const("w"), Optional(Const("b")), bind="conv")
    return Op("BatchNormalization", conv, Const("scale"), Const("bias"), Const("mean"), Const("var"), bind="bn")


def _inference_bn(match: Match) -> bool:
    bn = match["bn"]
    return bn.attr("training_mode", 0) == 0 and not any(v.uses() for v in bn.outputs[1:])


def _fold_bn(env: _Env, graph: Graph, match: Match) -> bool:
    conv, bn = match["conv"], match["bn"]
    w = match.const("w")
    if w.dtype.kind != "f" or w.ndim < 3:
        return False
    group = conv.attr("group", 1)
    channels = w.shape[0] if conv.op_type == "Conv" else w.shape[1] * group
    params = [match.const(k).astype(np.float64) for k in ("scale", "bias", "mean", "var")]
    if any(p.shape != (channels,) for p in params) or (conv.op_type == "ConvTranspose" and w.shape[0] % group):
        return False
    scale, bias, mean, var = params
    s = scale / np.sqrt(var + bn.attr("epsilon", 1e-5))
    kernel = (1,) * (w.ndim - 2)
    if conv.op_type == "Conv":
        folded_w = w * s.reshape(channels, 1, *kernel)
    else:  # [Cin, Cout/group, ...]: output channel g*Cout/group + j lives in rows of group g, column j
        grouped = w.astype(np.float64).reshape(group, w.shape[0] // group, *w.shape[1:])
        folded_w = (grouped * s.reshape(group, 1, -1, *kernel)).reshape(w.shape)
    b = match.const("b").astype(np.float64) if "b" in match else np.zeros(channels)
    folded_b = (b - mean) * s + bias
    bias_hint = match["b"].name if "b" in match else match["bias"].name
    inputs = [
        match["x"],
        env.constant(graph, f"{match['w'].name}_folded", folded_w.astype(w.dtype)),
        env.constant(graph, f"{bias_hint}_folded", folded_b.astype(w.dtype)),
    ]
    replace_root(graph, match, _like(conv, inputs))
    return True


# -- gemm-bias, matmul-bias ------------------------------------------------------------


def _bias_fits(bias: np.ndarray, width: int | None, rank: int | None) -> bool:
    """Constant along all but the last dim, as wide as the output (or 1), adding no dims."""
    if bias.dtype.kind != "f" or (rank is not None and bias.ndim > rank) or (rank is None and bias.ndim > 1):
        return False
    if any(d != 1 for d in bias.shape[:-1]):
        return False
    return bias.ndim == 0 or bias.shape[-1] == 1 or bias.shape[-1] == width


def _gemm_width(gemm: Node) -> int | None:
    b = gemm.inputs[1].const_array
    if b is not None and b.ndim == 2:
        return b.shape[0 if gemm.attr("transB", 0) else 1]
    shape = gemm.outputs[0].shape
    return shape[-1] if shape and isinstance(shape[-1], int) else None


def _gemm_bias_fits(match: Match) -> bool:
    return _bias_fits(match.const("bias"), _gemm_width(match["gemm"]), 2)


def _fold_gemm_bias(env: _Env, graph: Graph, match: Match) -> bool:
    gemm, bias = match["gemm"], match.const("bias")
    if "c" in match:
        folded = gemm.attr("beta", 1.0) * match.const("c").astype(np.float64) + bias
        if folded.ndim > 2:
            return False
        c = env.constant(graph, f"{match['c'].name}_folded", folded.astype(bias.dtype))
    else:
        c = match["bias"]
    node = _like(gemm, [gemm.inputs[0], gemm.inputs[1], c])
    node.attributes.pop("beta", None)  # C now holds beta*C + bias
    replace_root(graph, match, node)
    return True


def _matmul_bias_fits(match: Match) -> bool:
    w, x_shape = match.const("w"), match["x"].shape
    rank = len(x_shape) if x_shape is not None else None
    return w.ndim == 2 and w.dtype.kind == "f" and _bias_fits(match.const("bias"), w.shape[1], rank)


def _fold_matmul_bias(env: _Env, graph: Graph, match: Match) -> bool:
    x_shape = match["x"].shape
    if x_shape is None or len(x_shape) != 2:
        return env.group("matmul-bias", match.nodes)
    matmul = match["matmul"]
    gemm = Node("Gemm", [match["x"], match["w"], match["bias"]], 1, name=matmul.name, meta=matmul.meta)
    replace_root(graph, match, gemm)
    return True


# -- activations -----------------------------------------------------------------------


def _act_free(match: Match) -> bool:
    act = match["act"]
    bounds_known = act.op_type != "Clip" or all(v is None or v.const_array is not None for v in act.inputs[1:])
    return bounds_known and "group" not in act.meta


def _group_act(env: _Env, name: str, graph: Graph, match: Match) -> bool:
    return env.group(name, (match["op"], match["act"]))


# -- layernorm -------------------------------------------------------------------------

_x = Any("x")
_centered = Op("Sub", _x, Op("ReduceMean", _x, Optional(Const("mean_axes")), bind="mean"), bind="centered")
_square = Either(Op("Pow", _centered, Const(value=2.0)), Op("Mul", _centered, _centered))
_variance = Op("ReduceMean", _square, Optional(Const("var_axes")), bind="var")
_std = Op("Sqrt", Op("Add", _variance, Const("eps"), commutative=True))
_LAYERNORM = Op(
    "Add",
    Op("Mul", Op("Div", _centered, _std), Const("gamma"), commutative=True),
    Const("beta"), commutative=True, bind="shifted",
)


def _reduced_axes(node: Node, axes_input: str, match: Match, rank: int) -> tuple[int, ...] | None:
    if node.attr("keepdims", 1) != 1:
        return None
    if axes_input in match:
        axes = match.const(axes_input).reshape(-1).tolist()
    else:
        axes = node.attr("axes", None)
    if not axes:  # no axes: all of them, unless told to do nothing
        return None if node.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted(a % rank for a in axes))


def _normalized_dims(match: Match) -> tuple[int, ...] | None:
    """The trailing dims both means reduce over (all ints), or None when not a LayerNorm."""
    shape = match["x"].shape
    if shape is None or not shape or match["x"].dtype is None or not match["x"].dtype.is_float:
        return None
    rank = len(shape)
    axes = _reduced_axes(match["mean"], "mean_axes", match, rank)
    if axes is None or axes != _reduced_axes(match["var"], "var_axes", match, rank):
        return None
    dims = shape[rank - len(axes):]
    if axes != tuple(range(rank - len(axes), rank)) or not all(isinstance(d, int) for d in dims):
        return None
    if match.const("eps").size != 1:
        return None
    for key in ("gamma", "beta"):
        param = match.const(key)
        leading, trailing = param.shape[:-len(dims)], param.shape[-len(dims):]
        if param.ndim > rank or any(d != 1 for d in leading) or not _broadcasts(trailing, dims):
            return None
    return dims


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    return all(a in (1, b) for a, b in zip(shape[::-1], target[::-1]))


def _fold_layernorm(env: _Env, graph: Graph, match: Match) -> bool:
    if env.opset < 17:
        return env.group("layernorm", match.nodes)
    dims = _normalized_dims(match)
    dtype = match["x"].dtype.numpy
    params = []
    for key in ("gamma", "beta"):
        data = match.const(key)
        if data.shape == dims and data.dtype == dtype:
            params.append(match[key])
        else:  # LayerNormalization wants them in the normalized shape and x's dtype
            full = np.broadcast_to(data.reshape(data.shape[-len(dims):]), dims).astype(dtype)
            params.append(env.constant(graph, f"{match[key].name}_ln", full))
    epsilon = float(match.const("eps").reshape(-1)[0])
    node = Node("LayerNormalization", [match["x"], *params], 1, attributes={"axis": -len(dims), "epsilon": epsilon},
                name=match["mean"].name, meta=match["mean"].meta)
    replace_root(graph, match, node)
    return True


# -- gelu ------------------------------------------------------------------------------


def _times_half(x: Any, one_plus: Op) -> Either:
    """x * 0.5 * one_plus, however the two products nest."""
    half = Const(value=0.5)
    return Either(
        Op("Mul", Op("Mul", x, one_plus, commutative=True), half, commutative=True),
        Op("Mul", Op("Mul", x, half, commutative=True), one_plus, commutative=True),
        Op("Mul", x, Op("Mul", one_plus, half, commutative=True), commutative=True),
    )


_scaled_x = Either(
    Op("Div", _x, Const(value=math.sqrt(2.0))), Op("Mul", _x, Const(value=math.sqrt(0.5)), commutative=True)
)
_erf_plus_one = Op("Add", Op("Erf", _scaled_x), Const(value=1.0), commutative=True)
_cube = Either(Op("Pow", _x, Const(value=3.0)), Op("Mul", _x, Op("Mul", _x, _x), commutative=True))
_inner = Op("Add", _x, Op("Mul", _cube, Const(value=0.044715), commutative=True), commutative=True)
_tanh = Op("Tanh", Op("Mul", _inner, Const(value=math.sqrt(2.0 / math.pi)), commutative=True), bind="tanh")
_tanh_plus_one = Op("Add", _tanh, Const(value=1.0), commutative=True)
_GELU = Either(_times_half(_x, _erf_plus_one), _times_half(_x, _tanh_plus_one))


def _fold_gelu(env: _Env, graph: Graph, match: Match) -> bool:
    if env.opset < 20:
        return env.group("gelu", match.nodes)
    approximate = "tanh" if "tanh" in match else "none"
    replace_root(graph, match, Node("Gelu", [match["x"]], 1, attributes={"approximate": approximate},
                                    name=match.root.name, meta=match.root.meta))
    return True


# -- the pattern table -----------------------------------------------------------------


def _patterns(env: _Env) -> list[Pattern]:
    def rewrite(function):
        return functools.partial(function, env)

    acts = [
        Pattern(name, Op(env.activations, Op(ops, bind="op"), bind="act"), functools.partial(_group_act, env, name),
                (*_INTERNAL, _act_free), benefit=1)
        for name, ops in (("conv-act", "Conv"), ("convtranspose-act", "ConvTranspose"), ("gemm-act", "Gemm"),
                          ("matmul-act", "MatMul"), ("add-act", "Add"))
    ]
    return [
        Pattern("conv-bn", _conv_bn("Conv"), rewrite(_fold_bn), (*_INTERNAL, _inference_bn), benefit=2),
        Pattern("convtranspose-bn", _conv_bn("ConvTranspose"), rewrite(_fold_bn), (*_INTERNAL, _inference_bn),
                benefit=2),
        Pattern("gemm-bias", Op("Add", Op("Gemm", Any(), Any(), Optional(Const("c")), bind="gemm"), Const("bias"),
                                commutative=True), rewrite(_fold_gemm_bias), (*_INTERNAL, _gemm_bias_fits), benefit=2),
        Pattern("matmul-bias", Op("Add", Op("MatMul", Any("x"), Const("w"), bind="matmul"), Const("bias"),
                                  commutative=True), rewrite(_fold_matmul_bias),
                (*_INTERNAL, _ungrouped, _matmul_bias_fits), benefit=2),
        *acts,
        Pattern("layernorm", _LAYERNORM, rewrite(_fold_layernorm),
                (*_INTERNAL, _ungrouped, lambda m: _normalized_dims(m) is not None), benefit=9),
        Pattern("gelu", _GELU, rewrite(_fold_gelu), (*_INTERNAL, _ungrouped), benefit=5),
    ]


PATTERN_NAMES: tuple[str, ...] = tuple(p.name for p in _patterns(_Env(Model(Graph(), {}))))


@dataclass
class FuseOptions:
    """patterns: names to apply (all when empty); max_iterations: sweeps before giving up;
    activations: group those the target's integer kernels absorb (target) or all (rule 3)."""

    patterns: tuple[str, ...] = ()
    max_iterations: int = 10
    activations: Literal["target", "all"] = "target"

    def __post_init__(self) -> None:
        unknown = [p for p in self.patterns if p not in PATTERN_NAMES]
        if unknown:
            raise ValueError(f"unknown pattern {', '.join(map(repr, unknown))}; known: {', '.join(PATTERN_NAMES)}")
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")


@register_pass
class Fuse(Pass):
    """Fold BatchNormalization and biases into their producers; group ops quantized as one."""

    name = "fuse"
    writes = frozenset({"group"})
    Options = FuseOptions

    def run(self, model: Model, ctx) -> bool:
        env = _Env(model, ctx.target.absorbed if self.options.activations == "target" else FUSABLE_ACTIVATIONS)
        selected = [p for p in _patterns(env) if not self.options.patterns or p.name in self.options.patterns]
        graphs = [model.graph, *(sub for node in model.graph.all_nodes() for sub in node.subgraphs())]
        changed = False
        for graph in graphs:
            result = apply_patterns(graph, selected, self.options.max_iterations)
            self.stats.update(result.counts)
            if not result.converged:
                self.stats["iteration_cap_hit"] += 1
            changed |= bool(result.counts)
        return changed


def _like(node: Node, inputs: list) -> Node:
    """A copy of `node` (op, attributes, name, meta) reading `inputs`."""
    return Node(node.op_type, inputs, 1, attributes=dict(node.attributes), domain=node.domain, name=node.name,
                meta=node.meta)
