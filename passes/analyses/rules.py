"""Per-op quantization rules: each says what of an op to quantize, as a plan later passes read.

A rule is `(node, model) -> QuantPlan | None`, registered per (domain, op type) with
`@register_rule("Conv")`; a second rule for the same op is refused. Rules only read:
insert-observers, place-qdq and assign-precision all work from the same plans, so a
rule that mutated would make them disagree. `None`, and any op without a rule, means
the op stays float. `plans(model)` then applies what no single op can see:

1. Overrides: `node.meta["quantize"] = false` keeps a node float; `true` makes it
   quantize even where a heuristic (rules 3 and 4) would keep it float. They print in
   dumps, so a hand-edited .qir carries them; apply-overrides sets them from the recipe.
   `node.meta["precision"]` names a level of `PRECISIONS` (assign-precision sets it):
   fp16 and fp32 keep the node float like `quantize = false` (`kept_float`); w8a16 is
   read by place-qdq (16-bit activations) and fp16 by fold-weights (fp16 weights).
   dynamic leaves the node to dynamic-quant (int8 weights, activations quantized at run
   time): the static passes keep it float too, and so do the nodes dynamic-quant emits
   for it, which carry the mark.
2. Fusion groups (`node.meta["group"]`, see fuse.py) are quantized as one, by the plan
   of their first node: no edge inside a group is quantized, so the op's output is not
   and the activation's output is. An override on any member applies to the group.
3. Ops that only extend a quantized region (`needs_quantized_inputs`: pass-through
   ops, pooling, activations, Add, Mul, Concat, Softmax) are quantized only when every
   activation input arrives quantized: made by a quantized op, or quantized by a
   compute op (Conv, ConvTranspose, Gemm, MatMul) reading it. Only compute ops start
   regions. This is ONNX Runtime's default for its "latent" ops, widened: a float
   attention mask (-1e9 entries) must not get a scale, nor a LayerNorm's residual stream.
4. A plan with `keep_float` set names a heuristic that keeps the op float unless forced.
5. Only float values are quantized: a plan touching an integer tensor (shape arithmetic,
   indices) is dropped. Weights are constants: initializers (not graph inputs, which a
   caller may feed) or Constant outputs. Nodes inside subgraphs (If/Loop/Scan bodies)
   stay float: calibration taps the main graph only.

`quantized_values(model)` lists the activation values that get quantization parameters
and, for each, the value whose observer sets them: sharing chains resolve to a value
whose range covers every member, so only that one is observed.

    x ── Conv(w, b) ── Relu ── MaxPool ── y     Conv: activations (0,), weight 1 on axis 0, bias 2
         [conv-act#0 ........]                   Relu: outputs (0,)     MaxPool: output 0 follows input 0
    observed: x and Relu's output; y follows Relu's output
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from qcompiler.ir import DType, Model, Node, Value

NORMS = frozenset({"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"})


def norm_feeds_linear(model: Model) -> bool:
    """Whether a normalization feeds a MatMul or Gemm: a transformer's layers, where activation outliers live.
    A LayerNorm spelled out in primitive ops (exports below opset 17) counts once fuse has grouped it."""
    return any(_is_norm(node) and any(user.op_type in ("MatMul", "Gemm") for user in node.outputs[0].consumers())
               for node in model.graph.nodes)


def _is_norm(node: Node) -> bool:
    return node.op_type in NORMS or str(node.meta.get("group", "")).startswith("layernorm#")


class Weight(NamedTuple):
    """A constant input quantized as a weight: per channel along `axis`, per tensor when None."""

    input: int
    axis: int | None


class Bias(NamedTuple):
    """A constant input stored as int32 with scale s(activation input) * s(weight input), zero point 0."""

    input: int
    activation: int
    weight: int


@dataclass(frozen=True)
class QuantPlan:
    """What to quantize of one op, by input and output index.

    activations: inputs observed during calibration. outputs: outputs quantized with
    parameters of their own. output_follows: (output, input) pairs where the output takes
    the input's parameters (its values lie within the input's range: MaxPool, Reshape).
    inputs_follow_output: inputs that take output 0's parameters (Concat: the output
    holds every input's values, so one scale serves all). needs_quantized_inputs and
    keep_float: see rules 3 and 4 of the module.
    """

    activations: tuple[int, ...] = ()
    weights: tuple[Weight, ...] = ()
    bias: Bias | None = None
    outputs: tuple[int, ...] = ()
    output_follows: tuple[tuple[int, int], ...] = ()
    inputs_follow_output: tuple[int, ...] = ()
    needs_quantized_inputs: bool = False
    keep_float: str = ""


Rule = Callable[[Node, Model], "QuantPlan | None"]
_RULES: dict[tuple[str, str], Rule] = {}


def register_rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    """Decorator: `rule` decides the plan of nodes of these op types (in `domain`)."""
    domain = "" if domain == "ai.onnx" else domain

    def register(rule: Rule) -> Rule:
        for op_type in op_types:
            key = (domain, op_type)
            if key in _RULES:
                other = _RULES[key]
                raise ValueError(f"op {_qualified(key)} already has a rule: {other.__module__}.{other.__qualname__}")
            _RULES[key] = rule
        return rule

    return register


PRECISIONS = ("int8", "dynamic", "w8a16", "fp16", "fp32")  # the levels of rule 1, cheapest first


def kept_float(node: Node) -> bool:
    """Whether an override keeps `node` float in static quantization (rule 1): quantize=false,
    or precision fp16, fp32 or dynamic (left to dynamic-quant)."""
    return node.meta.get("quantize") is False or node.meta.get("precision") in ("fp16", "fp32", "dynamic")


def float_by_choice(model: Model) -> set[Node]:
    """The nodes an override keeps float, with every member of their fusion groups (rule 2)."""
    return with_groups(model, {node for node in model.graph.nodes if kept_float(node)})


def with_groups(model: Model, chosen: set[Node]) -> set[Node]:
    """`chosen` and every member of their fusion groups: an override on one member applies to all (rule 2)."""
    labels = {node.meta["group"] for node in chosen if "group" in node.meta}
    return chosen | {node for node in model.graph.nodes if node.meta.get("group") in labels}


def has_rule(node: Node) -> bool:
    """Whether some rule decides this node's plan (without one, the node stays float)."""
    return _rule_of(node) is not None


def _rule_of(node: Node) -> Rule | None:
    return _RULES.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type))


def _qualified(key: tuple[str, str]) -> str:
    return f"{key[0]}::{key[1]}" if key[0] else key[1]


# -- reading the graph -------------------------------------------------------------------


QDQ_DOMAINS = frozenset({"", "com.microsoft"})  # com.microsoft's pairs take 16-bit types below opset 21


def is_qdq(node: Node | None, op_type: str) -> bool:
    """`node` is a QuantizeLinear or DequantizeLinear (`op_type`) of a domain Q/DQ pairs use."""
    return node is not None and node.op_type == op_type and node.domain in QDQ_DOMAINS


_QUANTIZABLE_FLOATS = frozenset({DType.FLOAT, DType.FLOAT16, DType.BFLOAT16, DType.DOUBLE})


def is_float(value: Value | None) -> bool:
    """Whether `value` is a float16/32/64 or bfloat16 tensor: the kinds quantization touches (not float8)."""
    return value is not None and value.dtype in _QUANTIZABLE_FLOATS


def _is_norm(node: Node | None) -> bool:
    """A normalization op, or a member of a decomposed LayerNorm fuse grouped (`layernorm#<n>`)."""
    if node is None:
        return False
    group = node.meta.get("group")
    return node.op_type in NORMS or (isinstance(group, str) and group.startswith("layernorm#"))


# -- built-in rules ----------------------------------------------------------------------


def _weighted(node: Node, weight_axis: int | None, bias: Bias | None) -> QuantPlan:
    """Input 0 and 1 are activations or, when constant, weights (input 1 per channel)."""
    activations, weights = [], []
    for index, axis in ((0, None), (1, weight_axis)):
        if node.inputs[index] is not None and node.inputs[index].is_const:
            weights.append(Weight(index, axis))
        else:
            activations.append(index)
    return QuantPlan(tuple(activations), tuple(weights), bias, outputs=(0,))


def _bias(node: Node, index: int) -> Bias | None:
    """A 1-D float constant at `index` becomes the int32 bias; anything else stays float."""
    value = node.inputs[index] if len(node.inputs) > index else None
    if not (is_float(value) and value.is_const and value.shape is not None and len(value.shape) == 1):
        return None
    return Bias(index, 0, 1)


@register_rule("Conv")
def conv(node: Node, model: Model) -> QuantPlan:
    """Weight [C_out, C_in/group, k...] per output channel (axis 0); bias int32 at s_x * s_w.

    A weight that is not a constant is an activation (both inputs observed). The output
    is quantized: ONNX Runtime turns DQ-Conv-Q into QLinearConv only when it is.
    """
    return _weighted(node, 0, _bias(node, 2))


@register_rule("ConvTranspose")
def conv_transpose(node: Node, model: Model) -> QuantPlan:
    """Weight [C_in, C_out/group, k...] per channel along axis 1, which counts channels within a group.

    With group > 1, output channel g * C_out/group + j uses scale j, so the int32 bias's
    scale for channel c is s_x * s_w[c mod C_out/group]. Output quantized as for Conv.
    """
    return _weighted(node, 1, _bias(node, 2))


@register_rule("Gemm")
def gemm(node: Node, model: Model) -> QuantPlan:
    """B per output column: axis 0 when transB (B is [N, K]), else 1; C is the int32 bias.

    C becomes the bias only when 1-D, constant and alpha = beta = 1: the integer
    accumulator holds A*B at scale s_a * s_b, so another alpha or beta would need folding
    into it first. Otherwise C stays float. The output is quantized, as for Conv.
    """
    unit = node.attr("alpha", 1.0) == 1.0 and node.attr("beta", 1.0) == 1.0
    return _weighted(node, 0 if node.attr("transB", 0) else 1, _bias(node, 2) if unit else None)


@register_rule("MatMul")
def matmul(node: Node, model: Model) -> QuantPlan:
    """A constant 2-D B ([K, N]) is a weight per output column (axis 1); other constants per tensor.

    Two activations (attention's Q*K^T, P*V) are both observed. A constant A is a weight
    per tensor: integer MatMul kernels take one scale for A. The output is quantized:
    ONNX Runtime makes QLinearMatMul only of DQ-MatMul-Q.
    """
    b = node.inputs[1]
    axis = 1 if b is not None and b.is_const and b.shape is not None and len(b.shape) == 2 else None
    return _weighted(node, axis, None)


@register_rule("Add", "Mul")
def elementwise(node: Node, model: Model) -> QuantPlan | None:
    """Two activations: both and the output quantized, when both arrive quantized (rule 3).

    A constant operand keeps the op float: it is a per-channel shift or scale (LayerNorm's
    gamma and beta, GELU's 0.5, 1/sqrt(d), an unfolded BatchNorm) that one per-tensor
    scale represents badly, and an elementwise op gains little from integer kernels. An
    Add next to a normalization (an input made by one, or its output read by one) is a
    transformer residual stream, whose outlier channels per-tensor quantization crushes:
    it stays float unless forced. Rule 3 already keeps most of those float (the stream
    starts at embeddings nobody quantizes); this catches the rest.
    """
    if any(v is not None and v.is_const for v in node.inputs):
        return None
    reason = ""
    if node.op_type == "Add":
        if any(_is_norm(v.producer) for v in node.inputs):
            reason = "residual stream: an input comes from a normalization"
        elif any(_is_norm(c) for c in node.outputs[0].consumers()):
            reason = "residual stream: the output feeds a normalization"
    return QuantPlan(activations=(0, 1), outputs=(0,), needs_quantized_inputs=True, keep_float=reason)


@register_rule("Concat")
def concat(node: Node, model: Model) -> QuantPlan | None:
    """All inputs and the output share one scale, decided by the output's observer.

    The output holds every input's values, so its range covers them all; constant inputs
    are quantized with that scale too. Sharing saves requantizing each input; an input
    that already follows another value keeps its parameters (see quantized_values).
    """
    activations = tuple(i for i, v in enumerate(node.inputs) if v is not None and not v.is_const)
    if not activations:
        return None
    return QuantPlan(activations=activations, outputs=(0,), inputs_follow_output=tuple(range(len(node.inputs))),
                     needs_quantized_inputs=True)


def _pass_through(node: Node, outputs: tuple[int, ...]) -> QuantPlan | None:
    if node.inputs[0] is not None and node.inputs[0].is_const:
        return None  # e.g. Gather of an embedding table: a lookup, left to weight passes
    return QuantPlan(activations=(0,), output_follows=tuple((o, 0) for o in outputs), needs_quantized_inputs=True)


@register_rule("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather")
def pass_through(node: Node, model: Model) -> QuantPlan | None:
    """Output 0 takes input 0's parameters: it only moves, selects or takes maxima of its values.

    Shapes, axes, starts and indices are integer inputs and stay as they are; MaxPool's
    optional indices output too. A constant data input (an embedding table) stays float.
    """
    return _pass_through(node, (0,))


@register_rule("Split")
def split(node: Node, model: Model) -> QuantPlan | None:
    """Every output takes the input's parameters."""
    return _pass_through(node, tuple(range(len(node.outputs))))


@register_rule("Resize")
def resize(node: Node, model: Model) -> QuantPlan | None:
    """Nearest and linear resizing keep values within the input's range: the output follows it.

    Cubic interpolation overshoots, and tf_crop_and_resize writes `extrapolation_value`
    outside the image, so there the output gets parameters of its own.
    """
    if node.inputs[0] is not None and node.inputs[0].is_const:
        return None
    within = node.attr("mode", "nearest") != "cubic" and \
        node.attr("coordinate_transformation_mode", "half_pixel") != "tf_crop_and_resize"
    if within:
        return QuantPlan(activations=(0,), output_follows=((0, 0),), needs_quantized_inputs=True)
    return QuantPlan(activations=(0,), outputs=(0,), needs_quantized_inputs=True)


@register_rule("AveragePool", "GlobalAveragePool", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "Softmax")
def unary(node: Node, model: Model) -> QuantPlan:
    """Input and output quantized, each with parameters of its own, when the input arrives quantized.

    Their output range differs from the input's: an average is much narrower, Relu drops
    the negatives, Sigmoid and Softmax map into [0, 1]. Next to a Conv or Gemm they are
    grouped by fuse instead. Softmax's input in attention carries the mask, which rule 3
    keeps float. Clip's bounds stay float.
    """
    return QuantPlan(activations=(0,), outputs=(0,), needs_quantized_inputs=True)


@register_rule("LayerNormalization")
def layer_normalization(node: Node, model: Model) -> None:
    """Stays float: ONNX Runtime's CPU kernels have no integer LayerNorm; quantizing it would only lose accuracy.

    Its input is a residual stream with outlier channels; its output is quantized by the
    MatMuls reading it.
    """
    return None


@register_rule("Gelu", "Erf")
@register_rule("Gelu", "FastGelu", domain="com.microsoft")
def gelu(node: Node, model: Model) -> None:
    """Stays float: ONNX Runtime's CPU provider has no integer GELU, so Q/DQ around it would
    only add rounding. Its output is quantized by the MatMul reading it (the FFN's second
    Linear), where the integer work is."""
    return None


def in_qdq_form(value: Value, raw_readers: set[Node]) -> bool:
    """Made by a DequantizeLinear, or read by a QuantizeLinear and otherwise only by nodes kept
    float (`raw_readers`, float_by_choice): a pair the model already holds, whose parameters stay."""
    if is_qdq(value.producer, "DequantizeLinear"):
        return True
    readers = value.consumers()
    return (any(is_qdq(n, "QuantizeLinear") for n in readers)
            and all(is_qdq(n, "QuantizeLinear") or n in raw_readers for n in readers))


# -- whole-model plans -------------------------------------------------------------------


def plans(model: Model) -> dict[Node, QuantPlan]:
    """The plan of every quantized node of the main graph, after rules 1-5 of the module."""
    units = _units(model)
    quantized = {v for unit in units if not unit.needs_check for v in unit.values()}
    result: dict[Node, QuantPlan] = {}
    for unit in units:  # in graph order, so a unit's producers are decided before it
        if unit.needs_check and not all(v in quantized for v in unit.inputs()):
            continue
        quantized.update(unit.values())
        result.update(unit.plans)
    return {node: result[node] for node in model.graph.nodes if node in result}


@dataclass
class _Unit:
    """A fusion group (or a lone node) and its plans, quantized together or not at all."""

    plans: dict[Node, QuantPlan]
    needs_check: bool

    def inputs(self) -> list[Value]:
        return [node.inputs[i] for node, plan in self.plans.items() for i in plan.activations]

    def values(self) -> list[Value]:
        out = [node.outputs[i] for node, plan in self.plans.items()
               for i in (*plan.outputs, *(o for o, _ in plan.output_follows))]
        return self.inputs() + out


def _units(model: Model) -> list[_Unit]:
    nodes = list(model.graph.nodes)
    members: dict[object, list[Node]] = {}
    for node in nodes:
        label = node.meta.get("group")
        members.setdefault(node if label is None else ("group", label), []).append(node)
    units = []
    for group in members.values():  # dicts keep first-seen order: the order of the heads
        if any(kept_float(n) for n in group):
            continue
        plan = _own_plan(group[0], model)
        forced = any(n.meta.get("quantize") is True for n in group)
        if plan is None or (plan.keep_float and not forced):
            continue
        if plan.keep_float:
            plan = dataclasses.replace(plan, keep_float="")
        unit_plans = _group_plans(group, plan) if len(group) > 1 else {group[0]: plan}
        units.append(_Unit(unit_plans, plan.needs_quantized_inputs and not forced))
    return units


def _own_plan(node: Node, model: Model) -> QuantPlan | None:
    """The rule's plan, or None when it would quantize a value that is not float (rule 5)."""
    rule = _rule_of(node)
    plan = rule(node, model) if rule is not None else None
    if plan is None:
        return None
    touched = [
        *(node.inputs[i] for i in (*plan.activations, *(w.input for w in plan.weights), *plan.inputs_follow_output)),
        *(node.outputs[i] for i in (*plan.outputs, *(o for o, _ in plan.output_follows))),
        *([node.inputs[plan.bias.input]] if plan.bias else []),
    ]
    return plan if all(is_float(v) for v in touched) else None


def _group_plans(group: list[Node], head: QuantPlan) -> dict[Node, QuantPlan]:
    """Plans without the group's inner edges: the head's, then each member's boundary."""
    inside = set(group)

    def outside_input(node: Node, index: int) -> bool:
        return node.inputs[index].producer not in inside

    def leaves(node: Node, index: int) -> bool:
        value = node.outputs[index]
        return value.is_graph_output() or any(c not in inside for c in value.consumers())

    head_node = group[0]
    plans = {head_node: dataclasses.replace(
        head,
        activations=tuple(i for i in head.activations if outside_input(head_node, i)),
        outputs=tuple(i for i in head.outputs if leaves(head_node, i)),
        output_follows=tuple((o, i) for o, i in head.output_follows if leaves(head_node, o)),
        inputs_follow_output=head.inputs_follow_output if leaves(head_node, 0) else (),
    )}
    for node in group[1:]:
        plans[node] = QuantPlan(
            activations=tuple(i for i, v in enumerate(node.inputs)
                              if is_float(v) and not v.is_const and outside_input(node, i)),
            outputs=tuple(i for i, v in enumerate(node.outputs) if is_float(v) and leaves(node, i)),
            needs_quantized_inputs=head.needs_quantized_inputs,
        )
    return plans


def quantized_values(model: Model, node_plans: dict[Node, QuantPlan] | None = None) -> dict[Value, Value]:
    """Each activation value to quantize -> the value whose observer sets its parameters (often itself).

    A follower's range lies within its leader's, so the leader's observer decides for
    both: a pass-through output follows its input, a Concat input its output. A value
    follows at most one leader; a Concat input that already follows another (a MaxPool
    output, or an input of an earlier Concat) keeps it, and place-qdq requantizes it.
    Weights, biases and other constants are not listed.
    """
    node_plans = plans(model) if node_plans is None else node_plans
    leader: dict[Value, Value] = {}

    def root(value: Value) -> Value:
        while leader[value] is not value:
            leader[value] = leader[leader[value]]
            value = leader[value]
        return value

    for node in model.graph.nodes:
        plan = node_plans.get(node)
        if plan is None:
            continue
        for i in plan.activations:
            leader.setdefault(node.inputs[i], node.inputs[i])
        for i in plan.outputs:
            leader.setdefault(node.outputs[i], node.outputs[i])
        for o, i in plan.output_follows:
            leader[node.outputs[o]] = root(node.inputs[i])
        for i in plan.inputs_follow_output:
            value = node.inputs[i]
            if value in leader and leader[value] is value and root(node.outputs[0]) is not value:
                leader[value] = root(node.outputs[0])
    return {value: root(value) for value in leader}
