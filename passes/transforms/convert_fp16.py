"""convert-fp16: store and compute float32 tensors as float16, with Casts where float32 stays.

1. A node converts when the float32 values it reads and makes are bound, in its ONNX
   schema at the model's opset, to type parameters that allow float16: all of them turn
   float16 together. A parameter fixed to tensor(float) (Resize's scales) stays float32;
   one bound by a single input and no output (Cast's, Shape's input) takes either, so its
   value is read as it arrives; outputs typed by an attribute (Cast's `to`,
   ConstantOfShape) stay as they are. Nodes without float32 values are not touched.
2. These nodes stay float32, counted by reason in `kept_<reason>`:
   `blocked` (op in `op_block_list`), `by_choice` (rules.float_by_choice: quantize=false,
   precision fp32, and their fusion groups; precision fp16 asks for this very conversion),
   `no_schema` (contrib ops), `no_fp16` (the schema has no float16: Range, Celu),
   `subgraph` (If/Loop/Scan; their bodies keep float32), `constant_overflow` (a float32
   constant input with a finite |x| over 65504, float16's largest: kept, not clamped),
   `activation_overflow` (with calibration data, the producer and the readers of a value
   whose observed finite |x| exceeds 65504, from one ONNX Runtime run of the float model).
3. A constant read as float16 is stored as float16; the float32 one stays only while a
   float32 reader is left. With `keep_io_types` (default) graph inputs and outputs stay
   float32, converted at the edges; without it every float32 input and output turns float16.
4. Casts: one per value and dtype, right after the producer, shared by every reader that
   needs it; a chain of converted nodes has none between them. A Cast to float16 of a
   Cast to float32 reads the first Cast's input directly when that is float16 (the pair
   cancels) or an integer or bool (exact: integers float32 rounds are beyond float16's range).
5. Stats: nodes_converted, kept_<reason>, casts_inserted, constants_fp16, bytes_before and
   bytes_after (initializers), ort_cpu_fp16_kernels (converted nodes ONNX Runtime's CPU
   provider runs in float16). ctx.report["convert-fp16"] states them with the size ratio.
6. Measured with ONNX Runtime 1.32 on this x86 CPU (AVX2, no native float16) by loading
   one-op float16 models of ~140 default-domain ops: none fails (no NOT_IMPLEMENTED). The
   ops of `ORT_CPU_FP16_KERNELS` run in float16 kernels; around every other op ORT inserts
   Casts itself and computes in float32, and its optimizer then folds the Casts of weights
   and drops the float16 round trips between such ops. Latency, one thread, float16 over
   float32 (median of 7 x 100 runs): 0.99-1.03x on convnets (tests' conv_bn_pool,
   golden/resnet_like, unet_like, mlp), which end up computing in float32 from float16
   weights; 1.27x on golden/mobilenet_like, 1.30x on golden/transformer_block and 1.38x on
   tests' attention, where Reshape and Transpose run in float16 between Casts. So the
   mode is for size (about half) and for targets with float16 kernels, not for speed here.
   With no op to avoid for want of a kernel, the default block list is about numbers, after
   onnxconverter-common's: ops whose outputs are indices picked by comparing floats
   (ArgMax, ArgMin, TopK: float16 rounding makes ties the float model breaks otherwise),
   running sums (CumSum: integer counts stop being exact past 2048) and box coordinates
   (RoiAlign).

    %h: f32 = Conv(%x, %w, %b)             %x_fp16: f16 = Cast(%x) {to=f16}
    %c: f32 = CumSum(%h, %axis)     =>     %h: f16 = Conv(%x_fp16, %w_fp16, %b_fp16)
    %y: f32 = Relu(%c)                     %h_fp32: f32 = Cast(%h) {to=f32}
                                           %c: f32 = CumSum(%h_fp32, %axis)          blocked
                                           %c_fp16: f16 = Cast(%c) {to=f16}
                                           %y_fp16: f16 = Relu(%c_fp16)
                                           %y: f32 = Cast(%y_fp16) {to=f32}          keep_io_types
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import onnx

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, TensorType, Value
from qcompiler.ir.evaluate import ValueTap, tap_groups
from qcompiler.ir.onnx_export import constant_bytes

from ..infra.base import Pass, register_pass
from ..analyses.rules import float_by_choice

F16_MAX = float(np.finfo(np.float16).max)  # 65504
DEFAULT_BLOCK = ("ArgMax", "ArgMin", "CumSum", "RoiAlign", "TopK")  # rule 6
# Ops ONNX Runtime 1.32's CPU provider runs in float16 kernels, measured by loading one-op float16 models
# (ORT_DISABLE_ALL, optimized_model_filepath): the saved graph of every other op gained Casts ORT inserted itself.
ORT_CPU_FP16_KERNELS = frozenset({
    "Attention", "Cast", "Clip", "Compress", "Concat", "ConstantOfShape", "DequantizeLinear", "Expand", "Flatten",
    "Gather", "GatherElements", "GatherND", "Identity", "IsInf", "IsNaN", "LayerNormalization", "Max", "Min", "Mod",
    "QuantizeLinear", "RMSNormalization", "Reshape", "ReverseSequence", "RotaryEmbedding", "Round", "ScatterElements",
    "ScatterND", "Shape", "Shrink", "Sign", "Slice", "Split", "Squeeze", "Transpose", "Unsqueeze",
})
_SUFFIXES = {DType.FLOAT: "fp32", DType.FLOAT16: "fp16"}  # of value names
_TAP_BUDGET = 1 << 30  # activations held per batch while looking for overflow (calibrate's default)
_EXACT_SOURCES = frozenset({DType.FLOAT16, DType.BOOL, DType.INT8, DType.UINT8, DType.INT16, DType.UINT16,
                            DType.INT32, DType.UINT32, DType.INT64, DType.UINT64})  # rule 4


class _Plan(NamedTuple):
    """The float32 inputs and outputs of a node that turn float16 together (rule 1); with a reason,
    why they cannot (and then all its float32 slots, which keep float32)."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    reason: str = ""


@register_pass
class ConvertFp16(Pass):
    """Convert float32 tensors and the nodes computing them to float16, Casts at what stays float32."""

    name = "convert-fp16"
    reads = frozenset({"quantize", "precision", "group"})

    @dataclass
    class Options:
        """keep_io_types: graph inputs and outputs stay float32; op_block_list: op types that
        stay float32 (rule 6 explains the default)."""

        keep_io_types: bool = True
        op_block_list: tuple[str, ...] = DEFAULT_BLOCK

    def run(self, model: Model, ctx) -> bool:
        graph = model.graph
        bytes_before = constant_bytes(model)
        plans = {node: plan for node in graph.nodes if (plan := _plan(node, model.opset_imports)) is not None}
        kept = self._kept(model, plans, ctx.calibration_data)
        converted = {node: plan for node, plan in plans.items() if node not in kept}
        floats = [v for v in _main_values(graph) if v.dtype == DType.FLOAT]
        for node, plan in converted.items():
            for index in plan.outputs:
                _retype(node.outputs[index], DType.FLOAT16)
        if not self.options.keep_io_types:
            for value in graph.inputs:
                if value.dtype == DType.FLOAT:
                    _retype(value, DType.FLOAT16)
        names = NameAllocator(graph)
        made = sum(self._rewire(graph, names, value, converted, plans) for value in floats)
        folded = _fold_cast_pairs(graph)
        self.stats["casts_inserted"] -= folded
        self.stats["nodes_converted"] += len(converted)
        self.stats["ort_cpu_fp16_kernels"] += sum(n.op_type in ORT_CPU_FP16_KERNELS and not n.domain for n in converted)
        if not (converted or made or folded):
            return False
        self.stats["bytes_before"] = bytes_before
        self.stats["bytes_after"] = constant_bytes(model)
        ctx.report[self.name] = self._report()
        return True

    def _kept(self, model: Model, plans: dict[Node, _Plan], data) -> dict[Node, str]:
        """Rule 2: the nodes with float32 to convert that stay float32, with the reason."""
        chosen = {n for n in float_by_choice(model) if n.meta.get("precision") != "fp16"}
        blocked = set(self.options.op_block_list)
        kept = {}
        for node, plan in plans.items():
            if any(node.subgraphs()):
                kept[node] = "subgraph"
            elif plan.reason:
                kept[node] = plan.reason
            elif node.op_type in blocked and not node.domain:
                kept[node] = "blocked"
            elif node in chosen:
                kept[node] = "by_choice"
            elif any(_peak(node.inputs[i].const_array) > F16_MAX for i in plan.inputs):
                kept[node] = "constant_overflow"
        if data is not None:
            for value in _overflowing(model, plans, kept, data):
                for node in (value.producer, *value.consumers()):
                    if node in plans and node not in kept:
                        kept[node] = "activation_overflow"
        for reason in kept.values():
            self.stats[f"kept_{reason}"] += 1
        return kept

    def _rewire(self, graph: Graph, names: NameAllocator, value: Value, converted: dict[Node, _Plan],
                plans: dict[Node, _Plan]) -> int:
        """Rules 3 and 4: every reader of a value that was float32 gets the dtype it needs; how many
        conversions that made."""
        needs = {use: self._needed(graph, use.user, use.index, converted, plans) for use in value.uses()}
        made: dict[DType, Value] = {}
        for need in dict.fromkeys(n for n in needs.values() if n is not None and n != value.dtype):
            output = any(isinstance(use.user, Graph) for use, n in needs.items() if n == need)
            made[need] = self._convert(graph, names, value, need, output)
        for use, need in needs.items():
            if need in made and isinstance(use.user, Graph):
                use.user.set_output(use.index, made[need])
            elif need in made:
                use.user.set_input(use.index, made[need])
        graph.drop_unread_constants([value])
        return len(made)

    def _needed(self, graph: Graph, user: Node | Graph, index: int, converted: dict[Node, _Plan],
                plans: dict[Node, _Plan]) -> DType | None:
        """The dtype a reader needs of a value that was float32; None when either serves."""
        if user is graph:
            return DType.FLOAT if self.options.keep_io_types else DType.FLOAT16
        if isinstance(user, Graph) or user.graph is not graph:
            return DType.FLOAT  # subgraphs keep float32
        if user in converted:
            return DType.FLOAT16 if index in converted[user].inputs else None
        return DType.FLOAT if user in plans and index in plans[user].inputs else None

    def _convert(self, graph: Graph, names: NameAllocator, value: Value, dtype: DType, output: bool) -> Value:
        """`value` as `dtype`: a float16 copy of a constant, else a Cast after its producer.

        A graph output's Cast takes over the value's name (exported outputs keep theirs).
        """
        data = value.const_array if value.producer is None else None
        if data is not None and dtype == DType.FLOAT16:
            self.stats["constants_fp16"] += 1
            return graph.add_constant(Value(names.fresh(f"{value.name}_fp16"), const=data.astype(np.float16)))
        if output:
            name, value.name = value.name, names.fresh(f"{value.name}_{_SUFFIXES[value.dtype]}")
        else:
            name = names.fresh(f"{value.name}_{_SUFFIXES[dtype]}")
        cast = Node("Cast", [value], [Value(name, TensorType(dtype, value.shape))], attributes={"to": int(dtype)})
        graph.insert_after(value.producer, cast)  # graph inputs and constants: at the front
        self.stats["casts_inserted"] += 1
        return cast.outputs[0]

    def _report(self) -> dict:
        stats = self.stats
        return {
            "converted": stats["nodes_converted"],
            "kept_float32": {key.removeprefix("kept_"): count for key, count in sorted(stats.items())
                             if key.startswith("kept_")},
            "casts": stats["casts_inserted"], "constants_fp16": stats["constants_fp16"],
            "ort_cpu_fp16_kernels": stats["ort_cpu_fp16_kernels"],
            "bytes_before": stats["bytes_before"], "bytes_after": stats["bytes_after"],
            "ratio": round(stats["bytes_before"] / max(stats["bytes_after"], 1), 2),
        }


def _plan(node: Node, opset_imports: dict[str, int]) -> _Plan | None:
    """Rule 1: which float32 inputs and outputs of `node` turn float16; None when it has none to turn."""
    floats_in = tuple(i for i, v in enumerate(node.inputs) if v is not None and v.dtype == DType.FLOAT)
    floats_out = tuple(i for i, v in enumerate(node.outputs) if v.dtype == DType.FLOAT)
    if not (floats_in or floats_out):
        return None
    domain = "" if node.domain == "ai.onnx" else node.domain
    try:
        schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=opset_imports.get(domain, 1),
                                      domain=domain)
    except onnx.defs.SchemaError:
        return _Plan(floats_in, floats_out, "no_schema")
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    ins = _bindings(schema.inputs, node.inputs)
    outs = _bindings(schema.outputs, node.outputs)
    inputs: list[int] = []
    outputs: list[int] = []
    for param, types in allowed.items():
        read, made = ins.get(param, []), outs.get(param, [])
        if not read or (len(read) == 1 and not made):
            continue  # typed by an attribute, or read as it arrives
        if not any(v.dtype == DType.FLOAT for _, v in (*read, *made)):
            continue
        if "tensor(float16)" not in types:
            return _Plan(floats_in, floats_out, "no_fp16")
        inputs += [i for i, v in read if v.dtype == DType.FLOAT]
        outputs += [i for i, v in made if v.dtype == DType.FLOAT]
    return _Plan(tuple(sorted(inputs)), tuple(sorted(outputs))) if inputs or outputs else None


def _bindings(formals, actuals) -> dict[str, list[tuple[int, Value]]]:
    """Type parameter -> the (slot, value) pairs bound to it; a variadic last formal repeats."""
    found: dict[str, list[tuple[int, Value]]] = {}
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    for index, value in enumerate(actuals):
        formal = formals[min(index, len(formals) - 1)] if formals else None
        if value is None or formal is None or (index >= len(formals) and formal.option != variadic):
            continue
        found.setdefault(formal.type_str, []).append((index, value))
    return found


def _peak(data: np.ndarray | None) -> float:
    """The largest finite |x| of a float constant (infinities stay infinite in float16); 0 when unknown."""
    if data is None or data.dtype.kind != "f":
        return 0.0
    return float(np.abs(data[np.isfinite(data)]).max(initial=0.0))


def _overflowing(model: Model, plans: dict[Node, _Plan], kept: dict[Node, str], data) -> list[Value]:
    """Rule 2: the float32 values the nodes to convert touch whose observed finite |x| exceeds float16's range."""
    graph = model.graph
    candidates = {v: None for v in graph.inputs if v.dtype == DType.FLOAT}
    for node, plan in plans.items():
        if node not in kept:
            candidates.update({node.inputs[i]: None for i in plan.inputs})
            candidates.update({node.outputs[i]: None for i in plan.outputs})
    values = [v for v in candidates if v.const_array is None]
    peaks = dict.fromkeys(values, 0.0)
    for group in tap_groups(model, values, data, _TAP_BUDGET) if values else []:
        tap = ValueTap(model, [values[i] for i in group])
        for feeds in data:
            arrays = tap.run(feeds)
            for value, array in zip(tap.values, arrays):
                peaks[value] = max(peaks[value], _peak(array))
    return [v for v, peak in peaks.items() if peak > F16_MAX]


def _fold_cast_pairs(graph: Graph) -> int:
    """Rule 4: Cast(to=f16) of Cast(to=f32) reads the inner input when exact; how many Casts went."""
    removed = 0
    for node in list(graph.nodes):
        source = node.inputs[0].producer if _cast_to(node) == DType.FLOAT16 else None
        if _cast_to(source) != DType.FLOAT or source.inputs[0].dtype not in _EXACT_SOURCES:
            continue
        origin = source.inputs[0]
        if origin.dtype == DType.FLOAT16 and not node.outputs[0].is_graph_output():
            node.outputs[0].replace_all_uses_with(origin)
            graph.remove(node)
            removed += 1
        else:
            node.set_input(0, origin)
        if not source.outputs[0].uses():
            graph.remove(source)
            removed += 1
    return removed


def _cast_to(node: Node | None) -> DType | None:
    """The dtype a default-domain Cast converts to; None for any other node."""
    found = node.attr("to") if node is not None and node.op_type == "Cast" and not node.domain else None
    return None if found is None else DType(found)


def _retype(value: Value, dtype: DType) -> None:
    value.type = TensorType(dtype, value.shape)


def _main_values(graph: Graph) -> list[Value]:
    """Inputs, initializers and node outputs of the main graph (subgraphs keep their types)."""
    return [*graph.inputs, *(v for v in graph.constants if v not in graph.inputs),
            *(v for node in graph.nodes for v in node.outputs)]
