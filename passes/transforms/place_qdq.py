"""place-qdq: give each quantized activation its parameters and a QuantizeLinear/DequantizeLinear pair.

1. The values come from the quantization plans (`rules.quantized_values`): activation
   inputs and quantized outputs of quantized ops. Each gets `value.quant` from the
   observed range of its leader, the value whose observer decides for it (a MaxPool
   output takes its input's, a Concat input the Concat output's). A leader without an
   observed range is an error naming both values: run calibrate first.
2. The target (`ctx.target`, target.py) decides the dtype and where pairs go:
   - `ort-cpu`: every listed value; `activations=uint8` is asymmetric uint8 (ONNX
     Runtime's default and its fastest u8 x s8 kernels), `int8` is symmetric int8,
     `int16` symmetric int16 (zero point 0, codes -32767..32767: ONNX Runtime's QInt16),
     `uint16` asymmetric uint16. ONNX Runtime has no 16-bit integer kernels on CPU: ops
     reading 16-bit DQs run in float, trading speed for up to 48 dB less activation
     noise. Weights then bound the accuracy: int8 weights (fold-weights, or ONNX
     Runtime's WeightBiasQuantization, which quantizes float Conv/Gemm weights read
     between DQ and Q per tensor) leave ~40 dB, and reduce_range only costs there.
   - `tensorrt`: symmetric int8 only, and only on activation inputs of compute ops
     (Conv, ConvTranspose, Gemm, MatMul); outputs stay float, as TensorRT's explicit
     quantization expects. `activations=uint8` is refused.
   `activations=auto` (the default) is the target's own: uint8 on ort-cpu, int8 on tensorrt.
3. One Q and one DQ per value, inserted right after its definition; every reader (all
   of them: ONNX Runtime fuses DQ -> op -> Q when each op reads a DQ, and a shared DQ is
   enough) reads the DQ. Scale and zero point are new scalar constants, shared by the
   values that follow one leader.
4. Graph outputs keep their names and stay float: the DQ output takes over the graph
   output slot and the name, and the value it replaces is renamed `<name>_float`. A graph
   input that is also a graph output keeps passing through unquantized to that output.
5. A Concat input whose parameters differ from the output's (it follows another leader,
   or is a constant) is requantized on that edge with the output's parameters, so every
   Concat input reads one scale.
6. Values already in QDQ form (made by a DequantizeLinear, or read only by
   QuantizeLinear) are left alone, so the pass can run again and pre-quantized parts of
   a model keep their pairs. Values inside fusion groups are never listed (rules.py).
7. QuantizeLinear exists from opset 10; a lower opset is refused with a PassError asking
   to convert the model first (fold-weights needs 13 for per-channel weights). 16-bit
   pairs are ai.onnx ops from opset 21; below it they are ONNX Runtime's contrib
   com.microsoft QuantizeLinear/DequantizeLinear (same inputs and semantics, 16-bit
   types accepted), and the model gains a com.microsoft opset import when it has none.
   Pairs of either domain count as QDQ form for rule 6.
8. Per node: `node.meta["activations"] = "int16"` (any dtype the target accepts) sets
   the dtype of the values the node reads or produces as activations: its plan's
   `activations` inputs and its `outputs` and `output_follows` outputs (rules.py); in a
   fusion group a mark on any member counts for the whole group, whose plans list only
   its boundary values. Values following one leader share one set of parameters, so a
   mark reaches all of them (a MaxPool output and the Relu output it follows). When
   marks disagree on a value (read by an int16 node and an int8 node) the wider dtype
   wins, and at equal width the signed one (symmetric, so it serves both). Values no
   mark reaches take the pass option. A mark the target does not accept is refused.
   `node.meta["precision"] = "w8a16"` (rules.PRECISIONS) marks "int16" unless the node
   has an explicit mark.
9. Nodes an override keeps float (`rules.kept_float`: quantize=false, precision fp16 or
   fp32, with their fusion groups) read the float value itself, not its DQ. Reading a
   DQ, the op would still see the rounding the override is there to avoid, and ONNX
   Runtime's WeightBiasQuantization would quantize a float Conv/Gemm/ConvTranspose's
   weights per tensor and run it as QLinearConv anyway. The price: the producer's kernel
   has a float reader besides its Q, so ONNX Runtime does not fuse that Q into it.

    %r = Relu(%c) range=[0, 5.8]               %r = Relu(%c)
    %p = MaxPool(%r)                    =>     %r_q: u8 q<u8, scale=0.0227, zp=0> = QuantizeLinear(%r, %r_scale, %r_zp)
    %y = Conv(%p, %w)                          %r_dq = DequantizeLinear(%r_q, %r_scale, %r_zp)
                                               %p = MaxPool(%r_dq)
                                               %p_q = QuantizeLinear(%p, %r_scale, %r_zp)   (follows %r)
                                               %p_dq = DequantizeLinear(%p_q, %r_scale, %r_zp)
                                               %y = Conv(%p_dq, %w)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, QuantParams, TensorType, Value

from ..infra.base import Pass, PassError, register_pass
from ..analyses.cost import COMPUTE_OPS
from ..analyses.rules import PRECISIONS, QuantPlan, float_by_choice, in_qdq_form, is_qdq, plans, quantized_values
from ..infra.pipeline import parse_pipeline
from ..infra.target import Target

_MIN_OPSET = 10
_16BIT_OPSET = 21  # ai.onnx QuantizeLinear/DequantizeLinear take int16/uint16 from here
_CONTRIB_DOMAIN = "com.microsoft"
_MARK = "activations"  # node.meta key of rule 8


# activation dtype -> (DType, symmetric), narrowest first: rule 8 keeps the later of two
_ACTIVATION_DTYPES = {
    "uint8": (DType.UINT8, False), "int8": (DType.INT8, True),
    "uint16": (DType.UINT16, False), "int16": (DType.INT16, True),
}
_WIDTH = {name: rank for rank, name in enumerate(_ACTIVATION_DTYPES)}


@register_pass
class PlaceQdq(Pass):
    """Set each quantized activation's parameters from calibration and insert its Q/DQ pair."""

    name = "place-qdq"
    reads = frozenset({"quantize", "precision", "group", "activations"})
    needs = frozenset({"calibrated"})
    gives = frozenset({"qdq-placed"})
    refuses = frozenset({"weights-folded"})  # its scales make the int32 biases fold-weights stores

    @dataclass
    class Options:
        """activations: uint8, uint16 (asymmetric), int8, int16 (symmetric), or auto: the
        target's default (rule 2). Nodes may override (rule 8)."""

        activations: Literal["auto", "uint8", "int8", "uint16", "int16"] = "auto"

    def requires(self, model: Model, ctx) -> None:
        target = ctx.target
        accepted = " or ".join(sorted(target.accepts))
        if self.options.activations not in target.accepts | {"auto"}:
            raise PassError(f"target {target.name} takes activations={accepted}, not {self.options.activations}")
        for node in model.graph.nodes:
            precision, mark = node.meta.get("precision"), _mark(node)
            if precision is not None and precision not in PRECISIONS:
                raise PassError(f"node {node.name or node.outputs[0].name!r} asks for precision={precision!r}; "
                                f"the levels are {', '.join(PRECISIONS)}")
            if mark is not None and mark not in target.accepts:
                why = " (precision w8a16)" if node.meta.get(_MARK) is None else ""
                raise PassError(f"node {node.name or node.outputs[0].name!r} asks for {_MARK}={mark!r}{why}; "
                                f"target {target.name} takes {accepted}")
        if model.opset < _MIN_OPSET:
            raise PassError(f"place-qdq needs opset >= {_MIN_OPSET} for QuantizeLinear; the model has "
                            f"{model.opset}: run legalize-opset before it")

    def run(self, model: Model, ctx) -> bool:
        node_plans = ctx.analysis("plans", lambda: plans(model))
        raw_readers = float_by_choice(model)
        planned = planned_params(model, node_plans, ctx.target, self.options.activations)
        graph = model.graph
        names = NameAllocator(graph)
        constants: dict[Value, tuple[Value, Value]] = {}  # leader -> its scale and zero point
        placed: dict[Value, Node] = {}  # value -> the DQ its readers now read
        for value, (leader, params) in planned.items():
            if leader not in constants:
                constants[leader] = _constants(graph, names, leader.name, params)
            scale, zero_point = constants[leader]
            value.quant = params
            domain = _qdq_domain(model.opset, params.dtype)
            if domain:
                model.opset_imports.setdefault(domain, 1)
            placed[value] = _place(graph, names, value, params, scale, zero_point, domain, raw_readers)
            self.stats["qdq_pairs"] += 1
        if not ctx.target.compute_inputs_only:
            self.stats["requantized"] += _requantize_concat_inputs(graph, names, node_plans, placed)
        return bool(planned)


def planned_params(model: Model, node_plans: dict[Node, QuantPlan], target: Target,
                   activations: str = "auto") -> dict[Value, tuple[Value, QuantParams]]:
    """Each value place-qdq quantizes, with its leader and the parameters it gets (rules 1, 2, 6, 8):
    for passes that need the activations' rounding before the pairs exist."""
    default = target.activations if activations == "auto" else activations
    leaders = quantized_values(model, node_plans)
    marked = _marked_dtypes(leaders, node_plans)
    by_leader: dict[Value, QuantParams] = {}
    planned = {}
    for value, leader in _selected(leaders, node_plans, target, float_by_choice(model)).items():
        if leader not in by_leader:
            by_leader[leader] = _params(value, leader, *_ACTIVATION_DTYPES[marked.get(leader, default)])
        planned[value] = (leader, by_leader[leader])
    return planned


def following_params(model: Model, ctx) -> dict[Value, QuantParams]:
    """The parameters the place-qdq step that follows (`ctx.following`; its defaults when none does)
    will give each value it quantizes."""
    options = parse_pipeline(ctx.following).options_of(PlaceQdq.name) if ctx.following else None
    activations = (options or PlaceQdq.Options()).activations
    node_plans = ctx.analysis("plans", lambda: plans(model))
    return {value: params for value, (_, params) in planned_params(model, node_plans, ctx.target, activations).items()}


def _marked_dtypes(leaders: dict[Value, Value], node_plans: dict[Node, QuantPlan]) -> dict[Value, str]:
    """Rule 8: leader -> the widest dtype marked on a node reading or producing one of its followers."""
    group_marks: dict[str, str] = {}
    for node in node_plans:
        label, mark = node.meta.get("group"), _mark(node)
        if label is not None and mark is not None:
            group_marks[label] = _wider(group_marks.get(label), mark)
    chosen: dict[Value, str] = {}
    for node, plan in node_plans.items():
        label = node.meta.get("group")
        mark = group_marks.get(label) if label is not None else _mark(node)
        if mark is None:
            continue
        for value in _activation_values(node, plan):
            leader = leaders[value]
            chosen[leader] = _wider(chosen.get(leader), mark)
    return chosen


def _mark(node: Node) -> str | None:
    """The activation dtype `node` asks for (rule 8): its own mark, else int16 for precision w8a16."""
    mark = node.meta.get(_MARK)
    return "int16" if mark is None and node.meta.get("precision") == "w8a16" else mark


def _wider(current: str | None, mark: str) -> str:
    return mark if current is None or _WIDTH[mark] > _WIDTH[current] else current


def _activation_values(node: Node, plan: QuantPlan) -> Iterator[Value]:
    """The values `node` reads or produces as activations (rule 8)."""
    yield from (node.inputs[i] for i in plan.activations)
    yield from (node.outputs[i] for i in (*plan.outputs, *(o for o, _ in plan.output_follows)))


def _qdq_domain(opset: int, dtype: DType) -> str:
    """The domain of a pair of `dtype` (rule 7)."""
    return "" if dtype.bitwidth <= 8 or opset >= _16BIT_OPSET else _CONTRIB_DOMAIN


def _selected(values: dict[Value, Value], node_plans: dict[Node, QuantPlan], target: Target,
              raw_readers: set[Node]) -> dict[Value, Value]:
    """The listed values the target quantizes, minus those already in QDQ form (rule 6)."""
    if target.compute_inputs_only:
        inputs = {node.inputs[i] for node, plan in node_plans.items()
                  if not node.domain and node.op_type in COMPUTE_OPS for i in plan.activations}
        values = {v: leader for v, leader in values.items() if v in inputs}
    return {v: leader for v, leader in values.items()
            if not in_qdq_form(v, raw_readers) and not _read_raw_only(v, raw_readers)}


def _read_raw_only(value: Value, raw_readers: set[Node]) -> bool:
    """Every reader keeps float and reads the value itself (rule 9): a pair would be dead."""
    readers = value.consumers()
    return bool(readers) and not value.is_graph_output() and all(n in raw_readers for n in readers)


def _params(value: Value, leader: Value, dtype: DType, symmetric: bool) -> QuantParams:
    if leader.observed_range is None:
        via = "" if leader is value else f" (its parameters come from %{leader.name})"
        raise PassError(f"%{value.name}{via} has no observed range: run calibrate first")
    return QuantParams.from_range(*leader.observed_range, dtype, symmetric=symmetric)


def _constants(graph: Graph, names: NameAllocator, hint: str, params: QuantParams) -> tuple[Value, Value]:
    scale = graph.add_constant(Value(names.fresh(f"{hint}_scale"), const=params.scale))
    zero_point = graph.add_constant(Value(names.fresh(f"{hint}_zp"), const=params.zero_point))
    return scale, zero_point


def _pair(names: NameAllocator, source: Value, params: QuantParams, scale: Value, zero_point: Value,
          hint: str, dq_name: str, domain: str) -> tuple[Node, Node]:
    """Q(source) -> DQ, not yet in a graph; the Q output (`<hint>_q`) carries the parameters."""
    q_out = Value(names.fresh(f"{hint}_q"), TensorType(params.dtype, source.shape), quant=params)
    quantize = Node("QuantizeLinear", [source, scale, zero_point], [q_out], domain=domain)
    dq_out = Value(dq_name, source.type)
    return quantize, Node("DequantizeLinear", [q_out, scale, zero_point], [dq_out], domain=domain)


def _place(graph: Graph, names: NameAllocator, value: Value, params: QuantParams, scale: Value,
           zero_point: Value, domain: str, raw_readers: set[Node]) -> Node:
    """Insert Q/DQ after `value`'s definition and point its readers at the DQ (rules 3, 4, 9)."""
    hint = value.name
    uses = [use for use in value.uses() if use.user not in raw_readers]  # before the Q becomes a reader too
    takes_output = value.producer is not None and value.is_graph_output()
    if takes_output:
        dq_name, value.name = value.name, names.fresh(f"{value.name}_float")
    else:
        dq_name = names.fresh(f"{value.name}_dq")
    quantize, dequantize = _pair(names, value, params, scale, zero_point, hint, dq_name, domain)
    dq_out = dequantize.outputs[0]
    for use in uses:
        if isinstance(use.user, Node):
            use.user.set_input(use.index, dq_out)
        elif takes_output:
            use.user.set_output(use.index, dq_out)
    graph.insert_after(value.producer, quantize)  # a graph input's pair goes first
    graph.insert_after(quantize, dequantize)
    return dequantize


def _requantize_concat_inputs(graph: Graph, names: NameAllocator, node_plans: dict[Node, QuantPlan],
                              placed: dict[Value, Node]) -> int:
    """Rule 5: each Concat input not read at the output's parameters gets a pair of them."""
    count = 0
    for node, plan in node_plans.items():
        output_dq = placed.get(node.outputs[0]) if plan.inputs_follow_output else None
        if output_dq is None:
            continue
        params, scale, zero_point = node.outputs[0].quant, output_dq.inputs[1], output_dq.inputs[2]
        for index in plan.inputs_follow_output:
            source = node.inputs[index]
            if source is None or _read_at(source) == params:
                continue
            quantize, dequantize = _pair(names, source, params, scale, zero_point, f"{source.name}_rq",
                                         names.fresh(f"{source.name}_rq_dq"), output_dq.domain)
            graph.insert_before(node, quantize)
            graph.insert_before(node, dequantize)
            node.set_input(index, dequantize.outputs[0])
            count += 1
    return count


def _read_at(value: Value) -> QuantParams | None:
    """The parameters a DQ output was quantized with (its Q output's), else None."""
    producer = value.producer
    return producer.inputs[0].quant if is_qdq(producer, "DequantizeLinear") else None
