"""clone_model: a copy of a model that passes can rewrite while the original stays as it was.

Analyses that try variants of a model (sensitivity, precision assignment) run the
emitting passes on copies of one calibrated model.

1. Values, nodes, graphs and subgraphs are new objects wired the same way; names, types,
   quantization parameters, observed ranges, error figures and provenance are carried
   over, and `meta` dicts are copied (their entries are shared: passes replace entries,
   they do not mutate them in place).
2. Constant arrays are shared, not copied: passes replace a constant with a new value
   and never write into an array, and copying every weight would double the memory of
   each variant.
3. A subgraph node reading a value of an enclosing graph reads that value's copy.
4. `constants`, when given, maps each constant array to the one the copy holds instead
   (an analysis hands its variants mapped views, fileio.MappedArrays).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .attributes import Attr, AttrKind
from .core import Graph, Model, Node, Value

Constants = Callable[[np.ndarray], np.ndarray]


def clone_model(model: Model, *, constants: Constants | None = None) -> Model:
    """A copy of `model` sharing only constant arrays with it (rule 2), or holding `constants(array)` (rule 4)."""
    return Model(
        _clone_graph(model.graph, {}, constants),
        model.opset_imports,
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
        metadata=model.metadata,
    )


def _clone_graph(graph: Graph, outer: dict[Value, Value], constants: Constants | None) -> Graph:
    copies = dict(outer)  # rule 3: the enclosing graphs' values first
    inputs = [_clone_value(v, copies) for v in graph.inputs]
    held = [copies[v] if v in copies else _clone_value(v, copies, constants) for v in graph.constants]
    nodes = []
    for node in graph.nodes:
        outputs = [_clone_value(v, copies) for v in node.outputs]
        attributes = {key: _clone_attr(attr, copies, constants) for key, attr in node.attributes.items()}
        nodes.append(Node(node.op_type, [None if v is None else copies[v] for v in node.inputs], outputs,
                          attributes=attributes, domain=node.domain, name=node.name, meta=node.meta))
    return Graph(graph.name, inputs, [copies[v] for v in graph.outputs], nodes, held, graph.doc_string)


def _clone_value(value: Value, copies: dict[Value, Value], constants: Constants | None = None) -> Value:
    const = value.const
    if constants is not None and isinstance(const, np.ndarray):
        const = constants(const)
    copy = Value(value.name, value.type, const=const, quant=value.quant, meta=value.meta,
                 observed_range=value.observed_range)
    copy.error = value.error
    copies[value] = copy
    return copy


def _clone_attr(attr: Attr, copies: dict[Value, Value], constants: Constants | None) -> Attr:
    if attr.kind == AttrKind.GRAPH:
        return Attr(attr.kind, _clone_graph(attr.value, copies, constants))
    if attr.kind == AttrKind.GRAPHS:
        return Attr(attr.kind, tuple(_clone_graph(g, copies, constants) for g in attr.value))
    return attr
