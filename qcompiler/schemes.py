"""Which scheme each Linear of a compiled model got, read from the emitted graph, and the figure behind it.

A compile's report says what the pipeline was; a person hunting accuracy or speed wants
it per layer: which MatMul and Gemm run int8 and how, which stayed float and why, and
where smoothing moved outliers into the weights.

1. Linears are the emitted MatMul, Gemm and MatMulInteger nodes and com.microsoft
   MatMulNBits, in graph order, by node name (the passes keep a rewritten node's name).
2. The scheme, from what the node reads:
   - MatMulInteger: `dynamic int8`, weights per tensor or per column (its zero points' size);
   - a weight behind a DequantizeLinear of constant int8 codes: `static int8`, per
     channel when the DequantizeLinear has an axis, with 8- or 16-bit activations as its
     activation's QuantizeLinear says (`w8a16`);
   - MatMulNBits: `weight-only int<bits>`, blocks of its block_size;
   - a float constant weight: `float`, with the precision mark that kept it so if any;
   - no constant weight (attention's two activations): `static int8 (two activations)`
     when both inputs come through a DequantizeLinear, else `float (two activations)`.
3. Why: the measured figure smooth-quant recorded for the node's input (its outlier
   ratio, the largest channel maximum over the median, and whether the division was
   folded or a Mul inserted), and the precision mark assign-precision or the recipe set.
4. `summary_line` counts schemes for the report; the per-node rows go into the JSON report.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from qcompiler import ir

_CONTRIB = "com.microsoft"


def linear_schemes(model: ir.Model, smoothing: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rules 1-3: one row per Linear of the emitted `model`; `smoothing` is smooth-quant's report, if it ran."""
    smoothed = {reader: value for value in (smoothing or {}).get("values", []) for reader in value["readers"]}
    rows = []
    for node in model.graph.nodes:
        scheme = _scheme(node)
        if scheme is None:
            continue
        row: dict[str, Any] = {"node": node.name, "scheme": scheme}
        if node.name in smoothed:
            value = smoothed[node.name]
            row["smoothed"] = f"input channel maxima up to {value['outlier_ratio']:g}x their median; {value['how']}"
        if "precision" in node.meta:
            row["precision"] = node.meta["precision"]
        rows.append(row)
    return rows


def summary_line(rows: list[dict[str, Any]]) -> str:
    """Rule 4: the schemes counted, and how many inputs were smoothed with the largest ratio."""
    counts = Counter(row["scheme"] for row in rows)
    text = ", ".join(f"{n} {scheme}" for scheme, n in counts.most_common())
    smoothed = [row for row in rows if "smoothed" in row]
    if smoothed:
        text += f"; {len(smoothed)} read smoothed inputs (per node in the JSON report)"
    return f"  linears: {text}"


def _scheme(node: ir.Node) -> str | None:
    if node.domain == _CONTRIB and node.op_type == "MatMulNBits":
        return f"weight-only int{node.attr('bits', 4)} (blocks of {node.attr('block_size', 128)})"
    if node.domain:
        return None
    if node.op_type == "MatMulInteger":
        columns = _dynamic_scale_size(node)
        return "dynamic int8 " + ("(per-column weights)" if columns > 1 else "(per-tensor weights)")
    if node.op_type not in ("MatMul", "Gemm"):
        return None
    weight = node.inputs[1]
    if weight.is_const:
        return "float"
    dq = weight.producer
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.inputs[0].is_const:
        per_channel = "per-channel" if dq.attr("axis", None) is not None and dq.inputs[1].const_array.size > 1 \
            else "per-tensor"
        return f"static {_activation_bits(node.inputs[0])} ({per_channel} weights)"
    if all(v is not None and v.producer is not None and v.producer.op_type == "DequantizeLinear"
           for v in node.inputs[:2]):
        return f"static {_activation_bits(node.inputs[0])} (two activations)"
    return "float (two activations)"


def _activation_bits(value: ir.Value) -> str:
    """int8, or w8a16 where the activation arrives as 16-bit codes."""
    dq = value.producer
    codes = dq.inputs[0] if dq is not None and dq.op_type == "DequantizeLinear" else None
    return "w8a16" if codes is not None and codes.dtype is not None and codes.dtype.bitwidth == 16 else "int8"


def _dynamic_scale_size(node: ir.Node) -> int:
    """How many weight zero points (one per scale) a MatMulInteger reads: one per column when per column."""
    zero_point = node.inputs[3] if len(node.inputs) > 3 else None
    data = zero_point.const_array if zero_point is not None else None
    return 1 if data is None else int(data.size)
