"""The IR's invariants, checked all at once so one run reports every problem.

1. SSA: each value has one definition and a name no other value in the model uses.
2. Order: a node reads only values defined before it, in its graph or an enclosing one.
3. Use-lists: every input and graph output is listed in its value's uses, and every
   listed use is real.
4. Types: graph inputs, outputs and constants have types; constants match their data.
"""

from __future__ import annotations

import numpy as np

from .core import Graph, Model, Node, Use, Value
from .errors import VerifyError
from .tensors import ElidedTensor
from .types import TensorType


def verify_model(model: Model) -> None:
    problems = _check_graph(model.graph, visible=set(), names={})
    for node in model.graph.all_nodes():
        if node.domain and node.domain not in model.opset_imports:
            problems.append(f"node {_node_label(node)} uses domain {node.domain!r} the model does not import")
    if "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
        problems.append("the model imports no version of the default ONNX domain")
    if problems:
        raise VerifyError(problems)


def verify_graph(graph: Graph) -> None:
    """Raise VerifyError listing every broken invariant."""
    problems = _check_graph(graph, visible=set(), names={})
    if problems:
        raise VerifyError(problems)


def _node_label(node: Node) -> str:
    outs = ",".join(f"%{v.name}" for v in node.outputs)
    return f"{node.qualified_op}({node.name or outs})"


def _check_graph(graph: Graph, visible: set[Value], names: dict[str, Value]) -> list[str]:
    problems: list[str] = []
    where = f"graph @{graph.name}"
    defined = set(visible)

    def define(value: Value, what: str) -> None:
        if value in defined:
            problems.append(f"{where}: %{value.name} is defined twice ({what})")
        other = names.setdefault(value.name, value)
        if other is not value:
            problems.append(f"{where}: two values are named %{value.name}")
        defined.add(value)

    for value in graph.inputs:
        define(value, "input")
        if value.type is None:
            problems.append(f"{where}: input %{value.name} has no type")
    for value in graph.constants:
        if value not in graph.inputs:
            define(value, "constant")
        problems.extend(_check_constant(value, where))

    for node in graph.nodes:
        label = f"{where}: node {_node_label(node)}"
        if node.graph is not graph:
            problems.append(f"{label} does not point back to its graph")
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            if value not in defined:
                problems.append(f"{label} reads %{value.name} before it is defined (or it is dangling)")
            if Use(node, index) not in value._uses:
                problems.append(f"{label}: input {index} %{value.name} does not list the node as a use")
        for sub in node.subgraphs():
            if sub.parent is not node:
                problems.append(f"{label}: subgraph @{sub.name} does not point back to its node")
            problems.extend(_check_graph(sub, defined, names))
        for index, value in enumerate(node.outputs):
            if value.producer is not node or value.output_index != index:
                problems.append(f"{label}: output %{value.name} does not point back to its producer")
            define(value, "node output")

    for index, value in enumerate(graph.outputs):
        if value not in defined:
            problems.append(f"{where}: output %{value.name} is not defined in scope")
        if Use(graph, index) not in value._uses:
            problems.append(f"{where}: output %{value.name} does not list the graph as a use")
        if value.type is None and graph.parent is None:
            problems.append(f"{where}: output %{value.name} has no type")

    for value in defined - visible:
        for use in value._uses:
            problems.extend(_check_use(value, use, where))
    return problems


def _check_constant(value: Value, where: str) -> list[str]:
    data = value.const
    if data is None:
        return [f"{where}: constant %{value.name} has no data"]
    if not isinstance(value.type, TensorType):
        return [f"{where}: constant %{value.name} has no tensor type"]
    shape = tuple(data.shape)
    dtype = data.dtype if isinstance(data, ElidedTensor) else np.dtype(data.dtype)
    expected = value.type.dtype if isinstance(data, ElidedTensor) else value.type.dtype.numpy
    if dtype != expected or (value.type.shape is not None and tuple(value.type.shape) != shape):
        return [f"{where}: constant %{value.name} data {dtype}{list(shape)} does not match its type"]
    return []


def _check_use(value: Value, use: Use, where: str) -> list[str]:
    user, index = use
    if isinstance(user, Node):
        if user.graph is None:
            return [f"{where}: %{value.name} lists a use by a removed node {_node_label(user)}"]
        if index >= len(user.inputs) or user.inputs[index] is not value:
            return [f"{where}: %{value.name} lists a stale use by {_node_label(user)} input {index}"]
    elif index >= len(user.outputs) or user.outputs[index] is not value:
        return [f"{where}: %{value.name} lists a stale use as output {index} of @{user.name}"]
    return []
