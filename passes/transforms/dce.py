"""Dead-code elimination shared by canonicalize and cleanup."""

from __future__ import annotations

from qcompiler.ir import Graph


def eliminate_dead_code(graph: Graph) -> tuple[int, int]:
    """Remove nodes whose outputs nobody reads, then unread constants, in every subgraph.

    Walks backwards so a dead chain goes in one sweep. Returns (nodes, constants) removed.
    """
    nodes = constants = 0
    for node in reversed(graph.nodes):
        if node.outputs and not any(v.uses() for v in node.outputs):
            graph.remove(node)
            nodes += 1
            continue
        for sub in node.subgraphs():
            inner = eliminate_dead_code(sub)
            nodes, constants = nodes + inner[0], constants + inner[1]
    return nodes, constants + graph.drop_unread_constants()
