"""cleanup: remove dead code and redundant Q/DQ, and name what has no name.

1. Q(DQ(q)) with the same scale, zero point and axis is q itself: the second pair goes.
2. QuantizeLinear/DequantizeLinear nodes reading the same value with equal parameters
   are merged (one pair per consumer set, not one per consumer).
3. Dead nodes and unread constants are removed.
4. Unnamed nodes get `<op>_<n>` names, so reports and overrides can refer to them.

    x ─ Q(s,z) ─ DQ(s,z) ─ Q(s,z) ─ DQ(s,z) ─ Conv     x ─ Q(s,z) ─ DQ(s,z) ─ Conv
                                                  =>
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from qcompiler.ir import Graph, Model, Node, Value

from ..infra.base import Pass, register_pass
from .dce import eliminate_dead_code
from ..analyses.rules import is_qdq

_QDQ = ("QuantizeLinear", "DequantizeLinear")


@register_pass
class Cleanup(Pass):
    """Remove dead code and redundant Q/DQ pairs; name unnamed nodes."""

    name = "cleanup"

    def run(self, model: Model, ctx) -> bool:
        graph = model.graph
        before = sum(self.stats.values())
        self.stats["requantize_removed"] += _remove_requantize(graph)
        self.stats["qdq_merged"] += _merge_duplicate_qdq(graph)
        nodes, constants = eliminate_dead_code(graph)
        self.stats["dead_nodes"] += nodes
        self.stats["dead_constants"] += constants
        self.stats["nodes_named"] += _name_nodes(graph)
        return sum(self.stats.values()) > before


def _same_params(a: Node, b: Node) -> bool:
    """Equal scale, zero point (constant data, or the very same value) and attributes."""
    if a.attributes != b.attributes or len(a.inputs) != len(b.inputs):
        return False
    return all(_same_value(x, y) for x, y in zip(a.inputs[1:], b.inputs[1:]))


def _same_value(x: Value | None, y: Value | None) -> bool:
    if x is y:
        return True
    a, b = (v.const_array if v is not None else None for v in (x, y))
    return a is not None and b is not None and a.dtype == b.dtype and np.array_equal(a, b)


def _remove_requantize(graph: Graph) -> int:
    removed = 0
    for node in graph.all_nodes():
        if not is_qdq(node, "QuantizeLinear"):
            continue
        source = node.inputs[0].producer if node.inputs[0] is not None else None
        if not is_qdq(source, "DequantizeLinear"):
            continue
        if _same_params(node, source) and node.outputs[0].dtype == source.inputs[0].dtype:
            node.outputs[0].replace_all_uses_with(source.inputs[0])
            removed += 1
    return removed


def _merge_duplicate_qdq(graph: Graph) -> int:
    merged = 0
    for node in graph.all_nodes():
        if not any(is_qdq(node, op) for op in _QDQ) or node.inputs[0] is None or not node.outputs[0].uses():
            continue  # not a Q/DQ, or already merged into a twin
        for twin in node.inputs[0].consumers():
            if twin is node or twin.op_type != node.op_type or twin.domain != node.domain or twin.inputs[0] is not node.inputs[0]:
                continue
            if twin.graph is node.graph and _same_params(node, twin) and twin.outputs[0].uses():
                twin.outputs[0].replace_all_uses_with(node.outputs[0])
                merged += 1
    return merged


def _name_nodes(graph: Graph) -> int:
    nodes = list(graph.all_nodes())
    taken = {n.name for n in nodes if n.name}
    counters: Counter[str] = Counter()
    named = 0
    for node in nodes:
        if node.name:
            continue
        while (candidate := f"{node.op_type}_{counters[node.op_type]}") in taken:
            counters[node.op_type] += 1
        node.name = candidate
        taken.add(candidate)
        named += 1
    return named
