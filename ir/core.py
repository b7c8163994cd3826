"""The graph IR: values, nodes, graphs, models.

Edges are object references, never names: a `Value` knows its producer and its uses,
and every mutation goes through methods that keep both sides right. A graph's outputs
count as uses too (`Use(graph, slot)`), so `replace_all_uses_with` rewires them along
with node inputs. Names are labels for printing and export only.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .attributes import Attr, AttrKind
from .dtypes import DType
from .errorstats import ErrorStats
from .quant import QuantParams
from .tensors import ElidedTensor, SparseTensor
from .types import TensorType, Type

if TYPE_CHECKING:
    import networkx


@contextmanager
def bulk_build() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many IR objects.

    Nodes and values point at each other, so every object is tracked; on 50k-node
    graphs the collector's full passes cost a fifth of import time and free nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Use(NamedTuple):
    """One place a value is read: input `index` of a node, or output slot of a graph."""

    user: Node | Graph
    index: int


class Value:
    """A tensor (or sequence/optional/map) flowing through the graph.

    Exactly one of: produced by a node (`producer`), a graph input, or a constant
    (`const` holds its data). A graph input may also carry a `const` as its default.
    `error` is what an accuracy debugger measured here: analysis data, never exported.
    """

    __slots__ = (
        "name", "type", "const", "quant", "meta", "error", "_observed_range", "_producer", "_output_index", "_uses",
        "_graph",
    )

    def __init__(
        self,
        name: str,
        type: Type | None = None,
        *,
        const: np.ndarray | ElidedTensor | None = None,
        quant: QuantParams | None = None,
        meta: dict[str, Any] | None = None,
        observed_range: tuple[float, float] | None = None,
        error: ErrorStats | None = None,
    ) -> None:
        self.name = name
        if type is None and const is not None:
            type = TensorType(_const_dtype(const), tuple(const.shape))
        self.type = type
        self.const = const
        self.quant = quant
        self.meta: dict[str, Any] = dict(meta or {})
        self.observed_range = observed_range
        self.error = error
        self._producer: Node | None = None
        self._output_index: int | None = None
        self._uses: dict[Use, None] = {}
        self._graph: Graph | None = None  # owning graph of an input or constant

    def __repr__(self) -> str:
        return f"Value(%{self.name})"

    @property
    def observed_range(self) -> tuple[float, float] | None:
        """The (lo, hi) range calibration chose for this value, kept at float32 precision
        (the precision of the scales it becomes), so dumps print it exactly."""
        return self._observed_range

    @observed_range.setter
    def observed_range(self, bounds: tuple[float, float] | None) -> None:
        if bounds is None:
            self._observed_range = None
            return
        lo, hi = (float(np.float32(b)) for b in bounds)
        if not lo <= hi:
            raise ValueError(f"observed range of %{self.name} has lo {lo} above hi {hi}")
        self._observed_range = (lo, hi)

    @property
    def producer(self) -> Node | None:
        return self._producer

    @property
    def output_index(self) -> int | None:
        return self._output_index

    @property
    def graph(self) -> Graph | None:
        """The graph that defines this value (via its producer, or as input/constant)."""
        return self._producer.graph if self._producer is not None else self._graph

    @property
    def dtype(self) -> DType | None:
        return getattr(self.type, "dtype", None)

    @property
    def shape(self) -> tuple | None:
        return getattr(self.type, "shape", None)

    @property
    def is_const(self) -> bool:
        """Data fixed at compile time: an initializer, or the output of a Constant node.

        A graph input's default is not (a caller may feed the input). Elided data (a dump
        parsed without its weights) still is: the value is fixed, only not loaded; read
        `const_array` for data to compute with.
        """
        producer = self._producer
        if producer is not None:
            return producer.op_type == "Constant" and not producer.domain
        return self.const is not None and (self._graph is None or self not in self._graph._inputs)

    @property
    def const_array(self) -> np.ndarray | None:
        """The data of a constant (`is_const`) when it is here: None for elided data and for
        a Constant node whose attribute is not a dense tensor or number(s)."""
        producer = self._producer
        if producer is None:
            return self.const if isinstance(self.const, np.ndarray) and self.is_const else None
        if producer.op_type != "Constant" or producer.domain or len(producer.attributes) != 1:
            return None
        (key, attr), = producer.attributes.items()
        if key == "value":
            return attr.value if isinstance(attr.value, np.ndarray) else None
        dtype = _CONSTANT_DTYPES.get(key)
        return None if dtype is None else np.asarray(attr.value, dtype)

    def uses(self) -> tuple[Use, ...]:
        """Snapshot of the uses, so callers may rewire while iterating."""
        return tuple(self._uses)

    def consumers(self) -> tuple[Node, ...]:
        """Distinct nodes reading this value, in first-use order."""
        return tuple(dict.fromkeys(u.user for u in self._uses if isinstance(u.user, Node)))

    def is_graph_output(self) -> bool:
        return any(isinstance(u.user, Graph) for u in self._uses)

    def replace_all_uses_with(self, other: Value) -> None:
        """Point every reader of this value (node inputs, graph outputs) at `other`."""
        if other is self:
            return
        for use in self.uses():
            if isinstance(use.user, Node):
                use.user.set_input(use.index, other)
            else:
                use.user.set_output(use.index, other)


_CONSTANT_DTYPES = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                    "value_ints": np.int64}  # of a Constant node's number attributes


def _const_dtype(const: np.ndarray | ElidedTensor) -> DType:
    return const.dtype if isinstance(const, ElidedTensor) else DType.from_numpy(const.dtype)


def infer_attr(value: Any) -> Attr:
    """An attribute from a plain Python value (non-empty lists only). It lives beside `Graph`
    because a graph is one of the values a node attribute holds."""

    def kind_of(v: Any) -> AttrKind:
        if isinstance(v, bool | int | np.integer):
            return AttrKind.INT
        if isinstance(v, float | np.floating):
            return AttrKind.FLOAT
        if isinstance(v, str):
            return AttrKind.STRING
        if isinstance(v, np.ndarray | ElidedTensor):
            return AttrKind.TENSOR
        if isinstance(v, Graph):
            return AttrKind.GRAPH
        if isinstance(v, SparseTensor):
            return AttrKind.SPARSE_TENSOR
        raise TypeError(f"cannot infer an attribute kind for {type(v).__name__}")

    if isinstance(value, list | tuple):
        if not value:
            raise TypeError("an empty list has no kind; build Attr(AttrKind.INTS, []) explicitly")
        kinds = {kind_of(v) for v in value}
        if kinds == {AttrKind.INT, AttrKind.FLOAT}:
            kinds = {AttrKind.FLOAT}
        if len(kinds) != 1:
            raise TypeError(f"mixed attribute list {value!r}")
        return Attr(kinds.pop().list_of, value)
    kind = kind_of(value)
    return Attr(kind, int(value) if kind == AttrKind.INT else value)


class Attributes(dict):
    """A node's attributes: plain Python values assigned here become typed `Attr`s."""

    def __init__(self, items: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.update(items or {})

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value if isinstance(value, Attr) else infer_attr(value))

    def update(self, items: Any = (), **more: Any) -> None:
        for key, value in dict(items, **more).items():
            self[key] = value


class Node:
    """An operator application: `outputs = domain::op_type(inputs) {attributes}`."""

    __slots__ = ("op_type", "domain", "name", "attributes", "meta", "_inputs", "_outputs", "_graph")

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[Value | None] = (),
        outputs: Sequence[Value] | int = 1,
        *,
        attributes: dict[str, Any] | None = None,
        domain: str = "",
        name: str = "",
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.attributes = Attributes(attributes)
        self.meta: dict[str, Any] = dict(meta or {})
        self._graph: Graph | None = None
        self._inputs: list[Value | None] = []
        for value in inputs:
            self._inputs.append(value)
            if value is not None:
                value._uses[Use(self, len(self._inputs) - 1)] = None
        if isinstance(outputs, int):
            outputs = [Value("") for _ in range(outputs)]
        for index, value in enumerate(outputs):
            if value._producer is not None or value._graph is not None:
                raise ValueError(f"{value!r} is already defined elsewhere; a value has one definition")
            value._producer, value._output_index = self, index
        self._outputs: tuple[Value, ...] = tuple(outputs)

    def __repr__(self) -> str:
        outs = ", ".join(f"%{v.name}" for v in self._outputs)
        return f"Node({outs} = {self.qualified_op}, name={self.name!r})"

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return self._outputs

    @property
    def graph(self) -> Graph | None:
        return self._graph

    def attr(self, key: str, default: Any = None) -> Any:
        """The value of attribute `key`, or `default` when the node does not set it (ONNX's default)."""
        found = self.attributes.get(key)
        return default if found is None else found.value

    def set_input(self, index: int, value: Value | None) -> None:
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            del old._uses[Use(self, index)]
        self._inputs[index] = value
        if value is not None:
            value._uses[Use(self, index)] = None

    def append_input(self, value: Value | None) -> None:
        self._inputs.append(None)
        self.set_input(len(self._inputs) - 1, value)

    def subgraphs(self) -> Iterator[Graph]:
        """Graphs held in attributes (If branches, Loop/Scan bodies)."""
        for attr in self.attributes.values():
            if isinstance(attr.value, Graph):
                yield attr.value
            elif isinstance(attr.value, tuple):
                yield from (g for g in attr.value if isinstance(g, Graph))

    def _detach_inputs(self) -> None:
        for index, value in enumerate(self._inputs):
            if value is not None:
                del value._uses[Use(self, index)]
        self._inputs = [None] * len(self._inputs)


class _Link:
    __slots__ = ("prev", "next", "node", "erased")

    def __init__(self, node: Node | None) -> None:
        self.prev = self.next = self
        self.node = node
        self.erased = False


class NodeList:
    """Ordered nodes in a doubly linked list: insertion and removal during iteration are safe.

    A removed link keeps its `next` pointer, so an iterator standing on it walks on.
    """

    def __init__(self) -> None:
        self._root = _Link(None)
        self._links: dict[Node, _Link] = {}

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, node: object) -> bool:
        return node in self._links

    def __iter__(self) -> Iterator[Node]:
        link = self._root.next
        while link is not self._root:
            if not link.erased:
                yield link.node
            link = link.next

    def __reversed__(self) -> Iterator[Node]:
        link = self._root.prev
        while link is not self._root:
            if not link.erased:
                yield link.node
            link = link.prev

    def insert_after(self, anchor: Node | None, node: Node) -> None:
        """Insert `node` after `anchor` (at the front when anchor is None)."""
        prev = self._root if anchor is None else self._links[anchor]
        link = _Link(node)
        link.prev, link.next = prev, prev.next
        prev.next.prev = link
        prev.next = link
        self._links[node] = link

    def insert_before(self, anchor: Node | None, node: Node) -> None:
        """Insert `node` before `anchor` (at the end when anchor is None)."""
        nxt = self._root if anchor is None else self._links[anchor]
        self.insert_after(nxt.prev.node if nxt.prev is not self._root else None, node)

    def remove(self, node: Node) -> None:
        link = self._links.pop(node)
        link.prev.next = link.next
        link.next.prev = link.prev
        link.erased = True


class Graph:
    """A dataflow graph: inputs, constants, nodes in topological order, outputs.

    Subgraphs (If/Loop/Scan bodies) are Graphs too; their nodes may read values of
    enclosing graphs, which then list those nodes among their uses.
    """

    def __init__(
        self,
        name: str = "main",
        inputs: Sequence[Value] = (),
        outputs: Sequence[Value] = (),
        nodes: Iterable[Node] = (),
        constants: Iterable[Value] = (),
        doc_string: str = "",
    ) -> None:
        self.name = name
        self.doc_string = doc_string
        self.nodes = NodeList()
        self._inputs: list[Value] = []
        self._outputs: list[Value] = []
        self._constants: dict[Value, None] = {}
        self.parent: Node | None = None  # the node holding this graph as an attribute
        for value in inputs:
            self.add_input(value)
        for value in constants:
            self.add_constant(value)
        for node in nodes:
            self.append(node)
        self.set_outputs(outputs)

    def __repr__(self) -> str:
        return f"Graph(@{self.name}, {len(self.nodes)} nodes)"

    # -- inputs, constants, outputs ------------------------------------------------

    @property
    def inputs(self) -> tuple[Value, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    @property
    def constants(self) -> tuple[Value, ...]:
        """Values with data (initializers), in definition order; may include input defaults."""
        return tuple(self._constants)

    def add_input(self, value: Value) -> Value:
        self._claim(value)
        self._inputs.append(value)
        return value

    def add_constant(self, value: Value) -> Value:
        """Register a constant; a graph input given here gains it as its default."""
        if value.const is None:
            raise ValueError(f"{value!r} has no data to be a constant")
        if value not in self._inputs:
            self._claim(value)
        self._constants[value] = None
        return value

    def remove_constant(self, value: Value) -> None:
        if value._uses:
            raise ValueError(f"{value!r} is still used by {len(value._uses)} reader(s)")
        del self._constants[value]
        if value not in self._inputs:
            value._graph = None

    def drop_unread_constants(self, values: Iterable[Value | None] | None = None) -> int:
        """Remove the constants of this graph that nobody reads: those among `values` (what a
        rewrite stopped reading; other values are left alone), or else every initializer.

        A Constant node goes with its output; a graph input keeps its default. Returns how many went.
        """
        if values is None:
            values = self.constants
        dropped = 0
        for value in dict.fromkeys(values):
            if value is None or value._uses or value.graph is not self or not value.is_const:
                continue
            if value._producer is not None:
                self.remove(value._producer)
            else:
                self.remove_constant(value)
            dropped += 1
        return dropped

    def remove_input(self, value: Value) -> None:
        if value._uses:
            raise ValueError(f"{value!r} is still used by {len(value._uses)} reader(s)")
        self._inputs.remove(value)
        if value not in self._constants:
            value._graph = None

    def freeze_input(self, value: Value) -> None:
        """An input with a default becomes a plain constant: callers can no longer feed it.

        Old exporters list every weight as an input with a default; quantizing one as a
        weight is only right once it can no longer change at run time.
        """
        if value not in self._constants:
            raise ValueError(f"{value!r} has no default to freeze")
        self._inputs.remove(value)

    def set_outputs(self, values: Sequence[Value]) -> None:
        for index, old in enumerate(self._outputs):
            del old._uses[Use(self, index)]
        self._outputs = list(values)
        for index, value in enumerate(self._outputs):
            value._uses[Use(self, index)] = None

    def set_output(self, index: int, value: Value) -> None:
        del self._outputs[index]._uses[Use(self, index)]
        self._outputs[index] = value
        value._uses[Use(self, index)] = None

    def _claim(self, value: Value) -> None:
        if value._producer is not None or (value._graph is not None and value._graph is not self):
            raise ValueError(f"{value!r} is already defined elsewhere; a value has one definition")
        value._graph = self

    # -- nodes ------------------------------------------------------------------------

    def append(self, node: Node) -> Node:
        return self.insert_before(None, node)

    def insert_before(self, anchor: Node | None, node: Node) -> Node:
        """Insert before `anchor` (at the end when None); returns the node."""
        self._adopt(node)
        self.nodes.insert_before(anchor, node)
        return node

    def insert_after(self, anchor: Node | None, node: Node) -> Node:
        """Insert after `anchor` (at the front when None); returns the node."""
        self._adopt(node)
        self.nodes.insert_after(anchor, node)
        return node

    def remove(self, node: Node) -> None:
        """Remove a node whose outputs nobody reads; its inputs lose it as a user."""
        for value in node.outputs:
            if value._uses:
                raise ValueError(f"cannot remove {node!r}: %{value.name} is still used")
        self.nodes.remove(node)
        node._detach_inputs()
        node._graph = None

    def _adopt(self, node: Node) -> None:
        if node._graph is not None:
            raise ValueError(f"{node!r} already belongs to {node._graph!r}")
        node._graph = self
        for sub in node.subgraphs():
            sub.parent = node

    # -- whole-graph views ------------------------------------------------------------

    @property
    def root(self) -> Graph:
        graph = self
        while graph.parent is not None and graph.parent.graph is not None:
            graph = graph.parent.graph
        return graph

    def all_nodes(self) -> Iterator[Node]:
        """Nodes of this graph and, depth first, of every subgraph."""
        for node in self.nodes:
            yield node
            for sub in node.subgraphs():
                yield from sub.all_nodes()

    def all_values(self) -> Iterator[Value]:
        """Every value defined in this graph or its subgraphs, each once."""
        yield from self._inputs
        yield from (v for v in self._constants if v not in self._inputs)
        for node in self.nodes:
            yield from node.outputs
            for sub in node.subgraphs():
                yield from sub.all_values()

    def sort(self) -> None:
        """Reorder nodes topologically (stable: keeps the current order where it can)."""
        from .analysis import topological_order

        order = topological_order(self)
        for node in order:
            self.nodes.remove(node)
            self.nodes.insert_before(None, node)

    def to_networkx(self) -> networkx.MultiDiGraph:
        from .analysis import to_networkx

        return to_networkx(self)


class Model:
    """A graph with the model-level facts ONNX keeps beside it."""

    def __init__(
        self,
        graph: Graph,
        opset_imports: dict[str, int],
        *,
        ir_version: int = 10,
        producer_name: str = "",
        producer_version: str = "",
        domain: str = "",
        model_version: int = 0,
        doc_string: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.graph = graph
        self.opset_imports = dict(opset_imports)
        self.ir_version = ir_version
        self.producer_name = producer_name
        self.producer_version = producer_version
        self.domain = domain
        self.model_version = model_version
        self.doc_string = doc_string
        self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return f"Model({self.graph!r}, opset={self.opset_imports})"

    @property
    def opset(self) -> int:
        """The version of the default ONNX domain."""
        return self.opset_imports.get("", 0)

