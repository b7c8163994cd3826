"""dynamic-quant: int8 weights stored offline, activations quantized at run time, no calibration.

ONNX Runtime's `quantize_dynamic` is the reference: what it emits for a MatMul, and what
its CPU provider fuses into its dynamic integer kernels.

1. Targets: MatMul with a constant 2-D float32 B ([K, N]), and Gemm with a constant
   float32 B (transB honoured: B stored [N, K] is transposed offline), transA = 0,
   alpha = 1 and C absent or constant (beta folded into it). A must be float32, the one
   type DynamicQuantizeLinear takes. Other forms stay float, counted as `skipped`.
2. Weights are int8 symmetric (zero point 0) from their min/max, the parameters
   fold-weights computes (`QuantParams.from_range`): per tensor by default, per output
   column with `per_channel=true`; `reduce_range=true` keeps codes within [-64, 64]
   (fold_weights.py rule 7: ONNX Runtime's u8 x s8 kernels saturate on x86 without VNNI).
   A weight read by several targets is stored once; the float one goes once unread.
3. Emission, per target (one DynamicQuantizeLinear per activation, shared by its targets):

       %y = MatMul(%x, %w)         =>   %x_q, %x_scale, %x_zp = DynamicQuantizeLinear(%x)
                                        %y_int: i32 = MatMulInteger(%x_q, %w_quantized, %x_zp, %w_zp)
                                        %y_cast = Cast(%y_int) {to=float}
                                        %y_scale = Mul(%x_scale, %w_scale)          ([N] per channel)
                                        %y = Mul(%y_cast, %y_scale)
       %y = Gemm(%x, %w, %c)       =>   ... %y_mul = Mul(%y_cast, %y_scale); %y = Add(%y_mul, %c)

   DynamicQuantizeLinear is ONNX's: asymmetric uint8 over [min(x, 0), max(x, 0)] of the
   whole tensor, scale = (max - min) / 255, zero point round(-min / scale) saturated.
   ONNX Runtime (ORT_ENABLE_EXTENDED and up) fuses MatMulInteger -> Cast -> Mul (and a
   constant bias Add, 1-D or [1, .., N]) into MatMulIntegerToFloat, per-tensor and
   per-column weight scales and zero points alike, then DynamicQuantizeLinear into
   DynamicQuantizeMatMul when one MatMulIntegerToFloat reads it. Each scale Mul has one
   reader and takes (x_scale, w_scale) in that order, as that fusion requires.
4. Figures (ONNX Runtime 1.32, one thread, AVX2 without VNNI, batch 1; SQNR against the
   float model; latency over float's): MLP 512-2048-512 per tensor 0.27x at 37.7 dB with
   reduce_range (20.9 dB without: the u8 x s8 kernel saturates), per column 0.31x at
   37.7 dB; static int8 (fold-weights{reduce_range=true}) 0.35x at 34.9 dB. An encoder
   block (hidden 256, 64 tokens) runs 1.01x float at 49.7 dB (per column: 1.04x, 49.7 dB).
   Per tensor is the default, as in `quantize_dynamic`: per-column scales are slower here
   and gained nothing measurable; they help where columns differ widely in range.
5. Which nodes: every target no override keeps float (quantize=false, precision fp16 or
   fp32; a mark on one member of a fusion group applies to the group, rules.with_groups);
   with `marked_only=true` only those marked `node.meta["precision"] = "dynamic"`
   (rules.PRECISIONS), for a static pipeline where this pass runs before insert-observers
   or place-qdq and the rest goes static. The emitted nodes carry the original's meta
   with precision "dynamic", which rules.kept_float reads: the static passes leave them
   float, and place-qdq gives their DynamicQuantizeLinear the float value rather than a
   DequantizeLinear (place_qdq.py rule 9), so the activation is rounded once. A node
   marked dynamic in a pipeline without this pass stays float.
6. Conv stays float. `quantize_dynamic` makes ConvInteger of it, but ONNX Runtime has no
   fused dynamic convolution: DynamicQuantizeLinear, ConvInteger, Cast, Mul run apart.
   Three 3x3/1x1 Convs (64 channels, 56x56) ran 3.9x slower than float with int8 weights
   and 1.18x slower with uint8 ones, at 38.9 dB.
7. Stats: nodes_rewritten, weights_quantized, skipped, bytes_float, bytes_quantized.
   ctx.report["dynamic-quant"] states them with the options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, TensorType, Value
from qcompiler.ir.quant import quantize

from ..infra.base import Pass, register_pass
from .patterns import erase
from ..analyses.rules import kept_float, with_groups
from ..infra.target import weight_reduce_range
from .weight_quant import weight_params

_DYNAMIC = "dynamic"  # the rules.PRECISIONS level this pass emits


class _Weight(NamedTuple):
    """A stored int8 weight [K, N]: its codes and the scale and zero point MatMulInteger and the Mul read."""

    codes: Value
    scale: Value
    zero_point: Value


@register_pass
class DynamicQuant(Pass):
    """Quantize MatMul/Gemm weights to int8 and their activations at run time (ONNX Runtime's dynamic kernels)."""

    name = "dynamic-quant"
    reads = frozenset({"quantize", "precision", "group"})

    @dataclass
    class Options:
        """per_channel: a scale per output column (else per tensor); reduce_range: 7-bit weight
        codes for x86 CPUs without VNNI (unset: the target's choice); marked_only: rewrite only nodes marked precision=dynamic."""

        per_channel: bool = False
        reduce_range: bool | None = None
        marked_only: bool = False

    def run(self, model: Model, ctx) -> bool:
        self.reduce_range = weight_reduce_range(self.options.reduce_range, ctx)
        graph = model.graph
        names = NameAllocator(graph)
        weights: dict[tuple[Value, bool], _Weight] = {}
        activations: dict[Value, tuple[Value, Value, Value]] = {}
        before = self.stats["nodes_rewritten"]
        for node in self._targets(model):
            self._rewrite(graph, names, node, weights, activations)
        changed = self.stats["nodes_rewritten"] > before
        if changed:
            ctx.report[self.name] = self._report()
        return changed

    def _targets(self, model: Model) -> list[Node]:
        """Rules 1 and 5: the nodes to rewrite, counting candidates left float."""
        nodes = model.graph.nodes
        marked = with_groups(model, {n for n in nodes if n.meta.get("precision") == _DYNAMIC})
        kept = with_groups(model, {n for n in nodes if kept_float(n) and n.meta.get("precision") != _DYNAMIC})
        targets = []
        for node in nodes:
            if not _has_weight(node) or (self.options.marked_only and node not in marked):
                continue
            if node in kept or not _supported(node):
                self.stats["skipped"] += 1
            else:
                targets.append(node)
        return targets

    def _rewrite(self, graph: Graph, names: NameAllocator, node: Node, weights: dict, activations: dict) -> None:
        """Rule 3: `node` gives way to the dynamic chain making the same output value."""
        x, w = node.inputs[0], node.inputs[1]
        transposed = node.op_type == "Gemm" and bool(node.attr("transB", 0))
        if (w, transposed) not in weights:
            weights[w, transposed] = self._store_weight(graph, names, w, transposed)
        weight = weights[w, transposed]
        meta = {**node.meta, "precision": _DYNAMIC}
        chain: list[Node] = []
        if x not in activations:
            chain.append(_dynamic_quantize(names, x, meta))
            activations[x] = chain[0].outputs
        x_q, x_scale, x_zp = activations[x]
        old = node.outputs[0]
        hint = old.name
        integer = Node("MatMulInteger", [x_q, weight.codes, x_zp, weight.zero_point],
                       [Value(names.fresh(f"{hint}_int"), TensorType(DType.INT32, old.shape))],
                       name=node.name, meta=meta)
        cast = Node("Cast", [integer.outputs[0]], [Value(names.fresh(f"{hint}_cast"), old.type)],
                    attributes={"to": int(DType.FLOAT)}, meta=meta)
        scale = Node("Mul", [x_scale, weight.scale],
                     [Value(names.fresh(f"{hint}_scale"), TensorType(DType.FLOAT, weight.scale.shape))], meta=meta)
        chain += [integer, cast, scale]
        bias = self._bias(graph, names, node)
        result = Value(old.name, old.type, meta=old.meta, observed_range=old.observed_range)
        scaled = result if bias is None else Value(names.fresh(f"{hint}_mul"), old.type)
        chain.append(Node("Mul", [cast.outputs[0], scale.outputs[0]], [scaled], meta=meta))
        if bias is not None:
            chain.append(Node("Add", [scaled, bias], [result], meta=meta))
        for new in chain:
            graph.insert_before(node, new)
        old.replace_all_uses_with(result)
        erase(graph, [node])
        self.stats["nodes_rewritten"] += 1

    def _store_weight(self, graph: Graph, names: NameAllocator, value: Value, transposed: bool) -> _Weight:
        """Rule 2: int8 codes [K, N] carrying their parameters, and the scale and zero point as constants."""
        data = value.const_array.T if transposed else value.const_array
        params = weight_params(data, 1 if self.options.per_channel else None, DType.INT8, True, self.reduce_range)
        codes = np.ascontiguousarray(quantize(data, params))
        stored = _Weight(*(graph.add_constant(Value(names.fresh(f"{value.name}_{key}"), const=array,
                                                    quant=params if key == "quantized" else None))
                           for key, array in (("quantized", codes), ("scale", params.scale),
                                              ("zp", params.zero_point))))
        self.stats["weights_quantized"] += 1
        self.stats["bytes_float"] += data.nbytes
        self.stats["bytes_quantized"] += codes.nbytes + params.scale.nbytes + params.zero_point.nbytes
        return stored

    def _bias(self, graph: Graph, names: NameAllocator, node: Node) -> Value | None:
        """A Gemm's C scaled by beta, added after the rescale (rule 1); None when absent."""
        c = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        beta = node.attr("beta", 1.0)
        if c is None or beta == 1.0:
            return c
        return graph.add_constant(Value(names.fresh(f"{c.name}_beta"), const=(beta * c.const_array).astype(np.float32)))

    def _report(self) -> dict:
        stats, options = self.stats, self.options
        return {
            "per_channel": options.per_channel, "reduce_range": self.reduce_range,
            "nodes": stats["nodes_rewritten"], "weights": stats["weights_quantized"], "skipped": stats["skipped"],
            "float_bytes": stats["bytes_float"], "quantized_bytes": stats["bytes_quantized"],
            "ratio": round(stats["bytes_float"] / max(stats["bytes_quantized"], 1), 2),
        }


def _dynamic_quantize(names: NameAllocator, x: Value, meta: dict) -> Node:
    """DynamicQuantizeLinear(x) -> (uint8 codes, scale, zero point), not yet in a graph."""
    outputs = [Value(names.fresh(f"{x.name}_q"), TensorType(DType.UINT8, x.shape)),
               Value(names.fresh(f"{x.name}_scale"), TensorType(DType.FLOAT, ())),
               Value(names.fresh(f"{x.name}_zp"), TensorType(DType.UINT8, ()))]
    return Node("DynamicQuantizeLinear", [x], outputs, meta=meta)


def _has_weight(node: Node) -> bool:
    """A MatMul or Gemm of the default domain reading a constant B: a candidate of rule 1."""
    weight = node.inputs[1] if not node.domain and node.op_type in ("MatMul", "Gemm") else None
    return weight is not None and weight.is_const


def _supported(node: Node) -> bool:
    """Rule 1: the forms the dynamic chain computes exactly."""
    x, w = node.inputs[0], node.inputs[1]
    data = w.const_array
    if x.dtype != DType.FLOAT or data is None or data.dtype != np.float32 or data.ndim != 2:
        return False
    if node.op_type == "MatMul":
        return True
    c = node.inputs[2] if len(node.inputs) > 2 else None
    return (not node.attr("transA", 0) and node.attr("alpha", 1.0) == 1.0
            and (c is None or (c.const_array is not None and c.dtype == DType.FLOAT)))
