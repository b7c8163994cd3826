"""Whole-graph analyses: topological order and a networkx view."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import networkx as nx

from .errors import VerifyError

if TYPE_CHECKING:
    from .core import Graph, Node, Value


def _outer_reads(node: Node) -> list[Value]:
    """Values a node reads: its inputs and what its subgraphs capture from outside."""
    reads = [v for v in node.inputs if v is not None]
    for sub in node.subgraphs():
        inner = set(sub.all_values())
        reads.extend(
            v for n in sub.all_nodes() for v in n.inputs if v is not None and v not in inner
        )
        reads.extend(v for v in sub.outputs if v not in inner)
    return reads


def topological_order(graph: Graph) -> list[Node]:
    """Nodes in dependency order, keeping the current order among independent nodes.

    Raises VerifyError naming the nodes on a cycle.
    """
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    waiting_on: dict = {}
    dependents: dict = {node: [] for node in nodes}
    for node in nodes:
        producers = {
            v.producer for v in _outer_reads(node) if v.producer is not None and v.producer in position
        }
        waiting_on[node] = len(producers)
        for producer in producers:
            dependents[producer].append(node)
    ready = [position[n] for n in nodes if waiting_on[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for dependent in dependents[node]:
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) != len(nodes):
        stuck = [n for n in nodes if waiting_on[n] > 0]
        names = ", ".join(f"{n.op_type} {n.name!r}" for n in stuck[:5])
        raise VerifyError([f"graph @{graph.name} has a cycle through {len(stuck)} node(s): {names}"])
    return order


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """A throwaway view for analyses: nodes are IR Nodes plus graph inputs/constants.

    Each edge runs from a value's producer (or the input/constant Value itself) to a
    reading node, keyed by the input index, with the Value under ``value``. Graph
    outputs are marked with ``output=True`` on their producer.
    """
    view = nx.MultiDiGraph(name=graph.name)
    for value in (*graph.inputs, *graph.constants):
        view.add_node(value, kind="const" if value.is_const else "input", name=value.name)
    for node in graph.nodes:
        view.add_node(node, kind="node", op_type=node.op_type, name=node.name)
    for node in graph.nodes:
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            source = value.producer if value.producer is not None else value
            if source in view:
                view.add_edge(source, node, key=index, value=value)
    for value in graph.outputs:
        source = value.producer if value.producer is not None else value
        if source in view:
            view.nodes[source]["output"] = True
    return view
