"""place-qdq: give each quantized activation its parameters and a QuantizeLinear/DequantizeLinear pair.

1. The values come from the quantization plans (`rules.quantized_values`): activation
   inputs and quantized outputs of quantized ops. Each gets `value.quant` from the
   observed range of its leader, the value whose observer decides for it (a MaxPool
   output takes its input's, a Concat input the Concat output's). A leader without an
   observed range is an error naming both values: run calibrate first.
2. The target decides the dtype and where pairs go:
   - `ort-cpu`: every listed value; `activations=uint8` is asymmetric uint8 (ONNX
     Runtime's default and its fastest u8 x s8 kernels), `int8` is symmetric int8.
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
   to convert the model first (fold-weights needs 13 for per-channel weights).

    %r = Relu(%c) range=[0, 5.8]               %r = Relu(%c)
    %p = MaxPool(%r)                    =>     %r_q: u8 q<u8, scale=0.0227, zp=0> = QuantizeLinear(%r, %r_scale, %r_zp)
    %y = Conv(%p, %w)                          %r_dq = DequantizeLinear(%r_q, %r_scale, %r_zp)
                                               %p = MaxPool(%r_dq)
                                               %p_q = QuantizeLinear(%p, %r_scale, %r_zp)   (follows %r)
                                               %p_dq = DequantizeLinear(%p_q, %r_scale, %r_zp)
                                               %y = Conv(%p_dq, %w)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, QuantParams, TensorType, Value

from .base import Pass, PassError, register_pass
from .rules import QuantPlan, plans, quantized_values

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_MIN_OPSET = 10


@dataclass(frozen=True)
class _Target:
    """What a target takes: its default activation dtype, the dtypes it accepts, and
    whether it quantizes every listed value or only the inputs of compute ops."""

    default: str
    accepts: frozenset[str]
    compute_inputs_only: bool


_TARGETS = {
    "ort-cpu": _Target("uint8", frozenset({"uint8", "int8"}), compute_inputs_only=False),
    "tensorrt": _Target("int8", frozenset({"int8"}), compute_inputs_only=True),
}
# activation dtype -> (DType, symmetric)
_ACTIVATION_DTYPES = {"uint8": (DType.UINT8, False), "int8": (DType.INT8, True)}


@register_pass
class PlaceQdq(Pass):
    """Set each quantized activation's parameters from calibration and insert its Q/DQ pair."""

    name = "place-qdq"

    @dataclass
    class Options:
        """target: ort-cpu or tensorrt (rule 2); activations: uint8 (asymmetric), int8
        (symmetric), or auto: the target's default."""

        target: Literal["ort-cpu", "tensorrt"] = "ort-cpu"
        activations: Literal["auto", "uint8", "int8"] = "auto"

    def requires(self, model: Model, ctx) -> None:
        target = _TARGETS[self.options.target]
        if self.options.activations not in target.accepts | {"auto"}:
            raise PassError(f"place-qdq{{target={self.options.target}}} takes "
                            f"activations={' or '.join(sorted(target.accepts))}, not {self.options.activations}")
        if model.opset < _MIN_OPSET:
            raise PassError(f"place-qdq needs opset >= {_MIN_OPSET} for QuantizeLinear; the model has "
                            f"{model.opset}: convert it first (onnx.version_converter.convert_version)")

    def run(self, model: Model, ctx) -> bool:
        target = _TARGETS[self.options.target]
        choice = target.default if self.options.activations == "auto" else self.options.activations
        dtype, symmetric = _ACTIVATION_DTYPES[choice]
        node_plans = plans(model)
        values = _selected(quantized_values(model, node_plans), node_plans, target)
        graph = model.graph
        names = NameAllocator(graph)
        by_leader: dict[Value, tuple[QuantParams, Value, Value]] = {}
        placed: dict[Value, Node] = {}  # value -> the DQ its readers now read
        for value, leader in values.items():
            if leader not in by_leader:
                params = _params(value, leader, dtype, symmetric)
                scale, zero_point = _constants(graph, names, leader.name, params)
                by_leader[leader] = (params, scale, zero_point)
            params, scale, zero_point = by_leader[leader]
            value.quant = params
            placed[value] = _place(graph, names, value, params, scale, zero_point)
            self.stats["qdq_pairs"] += 1
        if not target.compute_inputs_only:
            self.stats["requantized"] += _requantize_concat_inputs(graph, names, node_plans, placed)
        return bool(values)


def _selected(values: dict[Value, Value], node_plans: dict[Node, QuantPlan], target: _Target) -> dict[Value, Value]:
    """The listed values the target quantizes, minus those already in QDQ form (rule 6)."""
    if target.compute_inputs_only:
        inputs = {node.inputs[i] for node, plan in node_plans.items()
                  if not node.domain and node.op_type in COMPUTE_OPS for i in plan.activations}
        values = {v: leader for v, leader in values.items() if v in inputs}
    return {v: leader for v, leader in values.items() if not _in_qdq_form(v)}


def _in_qdq_form(value: Value) -> bool:
    if value.producer is not None and value.producer.op_type == "DequantizeLinear" and not value.producer.domain:
        return True
    readers = value.consumers()
    return bool(readers) and all(n.op_type == "QuantizeLinear" and not n.domain for n in readers)


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
          hint: str, dq_name: str) -> tuple[Node, Node]:
    """Q(source) -> DQ, not yet in a graph; the Q output (`<hint>_q`) carries the parameters."""
    q_out = Value(names.fresh(f"{hint}_q"), TensorType(params.dtype, source.shape), quant=params)
    quantize = Node("QuantizeLinear", [source, scale, zero_point], [q_out])
    dq_out = Value(dq_name, source.type)
    return quantize, Node("DequantizeLinear", [q_out, scale, zero_point], [dq_out])


def _place(graph: Graph, names: NameAllocator, value: Value, params: QuantParams, scale: Value,
           zero_point: Value) -> Node:
    """Insert Q/DQ after `value`'s definition and point its readers at the DQ (rules 3, 4)."""
    hint, uses = value.name, value.uses()  # before the Q becomes a reader too
    takes_output = value.producer is not None and value.is_graph_output()
    if takes_output:
        dq_name, value.name = value.name, names.fresh(f"{value.name}_float")
    else:
        dq_name = names.fresh(f"{value.name}_dq")
    quantize, dequantize = _pair(names, value, params, scale, zero_point, hint, dq_name)
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
                                         names.fresh(f"{source.name}_rq_dq"))
            graph.insert_before(node, quantize)
            graph.insert_before(node, dequantize)
            node.set_input(index, dequantize.outputs[0])
            count += 1
    return count


def _read_at(value: Value) -> QuantParams | None:
    """The parameters a DQ output was quantized with (its Q output's), else None."""
    producer = value.producer
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain:
        return None
    return producer.inputs[0].quant
