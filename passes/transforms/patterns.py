"""Declared rewrite patterns and the greedy driver that applies them.

A pattern is a tree of matchers read backwards from a root value along use-def edges:

    Op("BatchNormalization",
       Op("Conv", Any("x"), Const("w"), Optional(Const("b")), bind="conv"),
       Const("scale"), Const("bias"), Const("mean"), Const("var"), bind="bn")

Names bind nodes and values. A name met twice must bind the same object, which is how
a pattern says one value feeds two places (LayerNorm's `x` reaches ReduceMean and Sub).
`apply_patterns` sweeps the graph in order, tries the patterns rooted at each node by
benefit, lets no two matches of one sweep share a node, and repeats to a fixpoint
under an iteration cap. Names never serve as edges: matching follows producers only.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from qcompiler.ir import Graph, NameAllocator, Node, Use, Value

from ..infra.registry import KEBAB_NAME


@dataclass(frozen=True)
class Match:
    """What a pattern matched: its nodes (root first), named bindings, the edges it walked."""

    nodes: tuple[Node, ...] = ()
    bound: dict[str, Node | Value] = field(default_factory=dict)
    edges: frozenset[Use] = frozenset()

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def __getitem__(self, name: str) -> Node | Value:
        return self.bound[name]

    def __contains__(self, name: str) -> bool:
        return name in self.bound

    def const(self, name: str) -> np.ndarray:
        """The data of a value bound by `Const(name)`."""
        return self.bound[name].const_array

    def intermediates(self) -> list[Value]:
        """Outputs of the matched nodes other than the root: what a fusion makes disappear."""
        return [value for node in self.nodes[1:] for value in node.outputs]

    def _bind(self, name: str | None, obj: Node | Value) -> Match | None:
        if name is None:
            return self
        if name in self.bound:
            return self if self.bound[name] is obj else None
        return dataclasses.replace(self, bound={**self.bound, name: obj})


class Matcher:
    """Matches one value (an operand, or the root's output) and, through it, its producers."""

    def match(self, value: Value | None, match: Match) -> Iterator[Match]:
        """Every way `value` fits, each as `match` extended with what it bound."""
        raise NotImplementedError

    def root_ops(self) -> frozenset[str] | None:
        """Op types a root node can have (None: any), so the driver skips hopeless roots."""
        return None


@dataclass(frozen=True)
class Any(Matcher):
    """Any present value."""

    bind: str | None = None

    def match(self, value, match):
        if value is not None and (bound := match._bind(self.bind, value)) is not None:
            yield bound


@dataclass(frozen=True)
class Const(Matcher):
    """A value with known data (initializer or Constant); `value` asks for one number."""

    bind: str | None = None
    value: float | None = None

    def match(self, value, match):
        data = value.const_array if value is not None else None
        if data is None or not np.issubdtype(data.dtype, np.number):
            return
        if self.value is not None and not (data.size == 1 and np.isclose(data.item(), self.value, rtol=1e-4)):
            return
        if (bound := match._bind(self.bind, value)) is not None:
            yield bound


@dataclass(frozen=True)
class Optional(Matcher):
    """An omitted input, or one that `inner` matches."""

    inner: Matcher

    def match(self, value, match):
        if value is None:
            yield match
        else:
            yield from self.inner.match(value, match)


class Either(Matcher):
    """The first, then the second... of several alternatives."""

    def __init__(self, *alternatives: Matcher) -> None:
        self.alternatives = alternatives

    def match(self, value, match):
        for alternative in self.alternatives:
            yield from alternative.match(value, match)

    def root_ops(self):
        ops = [a.root_ops() for a in self.alternatives]
        return None if None in ops else frozenset().union(*ops)


class Op(Matcher):
    """A value that is output 0 of a node of `op_type` whose first inputs match `operands`.

    Inputs past the operands given are not checked; an operand beyond the node's inputs
    reads as omitted. `commutative` also tries two operands swapped.
    """

    def __init__(
        self, op_type: str | Sequence[str], *operands: Matcher, bind: str | None = None,
        commutative: bool = False, domain: str = "",
    ) -> None:
        self.ops = frozenset([op_type] if isinstance(op_type, str) else op_type)
        self.operands = operands
        self.bind = bind
        self.commutative = commutative and len(operands) == 2
        self.domain = domain

    def root_ops(self):
        return self.ops

    def match(self, value, match):
        node = value.producer if value is not None else None
        if node is None or node.op_type not in self.ops or node.domain != self.domain or value.output_index != 0:
            return
        match = match._bind(self.bind, node)
        if match is None:
            return
        if node not in match.nodes:
            match = dataclasses.replace(match, nodes=(*match.nodes, node))
        orders = [(0, 1), (1, 0)] if self.commutative else [tuple(range(len(self.operands)))]
        for order in orders:
            yield from self._operands(node, order, 0, match)

    def _operands(self, node: Node, order: tuple[int, ...], position: int, match: Match) -> Iterator[Match]:
        if position == len(order):
            yield match
            return
        index = order[position]
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is not None:
            match = dataclasses.replace(match, edges=match.edges | {Use(node, index)})
        for extended in self.operands[position].match(value, match):
            yield from self._operands(node, order, position + 1, extended)


Filter = Callable[[Match], bool]
Rewrite = Callable[[Graph, Match], bool]


@dataclass(frozen=True)
class Pattern:
    """A named rewrite: where it applies (matcher, filters), what it does, how much it gains.

    `rewrite(graph, match)` returns whether it changed the graph; returning False means
    it declined and left the graph untouched.
    """

    name: str
    matcher: Matcher
    rewrite: Rewrite
    filters: tuple[Filter, ...] = ()
    benefit: int = 1

    def __post_init__(self) -> None:
        if not KEBAB_NAME.fullmatch(self.name):
            raise ValueError(f"pattern names are kebab-case, not {self.name!r}")

    def matches(self, node: Node) -> Iterator[Match]:
        """Matches rooted at `node` that pass every filter."""
        if node.outputs:
            for match in self.matcher.match(node.outputs[0], Match()):
                if all(accept(match) for accept in self.filters):
                    yield match


def used_only_inside(match: Match) -> bool:
    """Each intermediate is read only where the pattern reads it (in a tree pattern: once)."""
    return all(set(value.uses()) <= match.edges for value in match.intermediates())


def not_graph_output(match: Match) -> bool:
    """No intermediate is a graph output."""
    return not any(value.is_graph_output() for value in match.intermediates())


@dataclass
class RewriteResult:
    """Rewrites applied per pattern name, sweeps run, and whether a sweep changed nothing."""

    counts: Counter[str]
    sweeps: int
    converged: bool


def apply_patterns(graph: Graph, patterns: Sequence[Pattern], max_iterations: int = 10) -> RewriteResult:
    """Rewrite `graph` greedily until no pattern applies, at most `max_iterations` sweeps.

    A sweep visits the nodes in order and tries the patterns rooted there, highest
    benefit first (ties in the given order). Nodes a rewrite matched or created are off
    limits for the rest of the sweep, so matches never overlap; the next sweep sees them.
    """
    ordered = sorted(patterns, key=lambda p: -p.benefit)
    by_op: dict[str | None, list[Pattern]] = {}
    for pattern in ordered:
        for op in pattern.matcher.root_ops() or (None,):
            by_op.setdefault(op, []).append(pattern)
    anywhere = by_op.pop(None, [])
    candidates = {op: sorted(ps + anywhere, key=ordered.index) for op, ps in by_op.items()}
    counts: Counter[str] = Counter()
    for sweep in range(1, max_iterations + 1):
        if not _sweep(graph, lambda node: candidates.get(node.op_type, anywhere), counts):
            return RewriteResult(counts, sweep, converged=True)
    return RewriteResult(counts, max_iterations, converged=False)


def _sweep(graph: Graph, candidates: Callable[[Node], list[Pattern]], counts: Counter[str]) -> bool:
    free = dict.fromkeys(graph.nodes)  # shrinks as rewrites claim nodes
    changed = False
    for node in list(free):
        if node not in free or node.graph is not graph:
            continue
        for pattern in candidates(node):
            match = next((m for m in pattern.matches(node) if all(n in free for n in m.nodes)), None)
            if match is not None and pattern.rewrite(graph, match):
                for claimed in match.nodes:
                    free.pop(claimed, None)
                counts[pattern.name] += 1
                changed = True
                break
    return changed


# -- helpers for rewrites -----------------------------------------------------------


def replace_root(graph: Graph, match: Match, node: Node) -> None:
    """Put `node` in the match's place; the matched nodes and constants only they read go.

    `node` is inserted before the root and takes over the root's output: its readers,
    its name (so graph outputs keep theirs) and, when `node`'s output has none, its type.
    """
    old, new = match.root.outputs[0], node.outputs[0]
    graph.insert_before(match.root, node)
    old.replace_all_uses_with(new)
    new.name = old.name  # graph outputs keep their names
    if new.type is None:
        new.type = old.type
    erase(graph, match.nodes)


def erase(graph: Graph, nodes: Sequence[Node]) -> None:
    """Remove `nodes`, none read from outside them, then the constants they leave unread,
    in whichever graph defines them (a subgraph's nodes may read an enclosing graph's)."""
    pending = dict.fromkeys(nodes)
    orphans: dict[Value, None] = {}
    while pending:
        dead = [n for n in pending if not any(v.uses() for v in n.outputs)]
        if not dead:
            raise ValueError(f"cannot erase {list(pending)}: their outputs are still read")
        for node in dead:
            orphans.update(dict.fromkeys(v for v in node.inputs if v is not None))
            graph.remove(node)
            del pending[node]
    for value in orphans:
        if value.graph is not None:
            value.graph.drop_unread_constants([value])



def scale_input(graph: Graph, names: NameAllocator, value: Value, readers: list[Node], factor: np.ndarray,
                scale_label: str, output_label: str) -> None:
    """The readers read Mul(value, factor) at input 0 instead of `value`, the Mul placed right after
    `value` is made (before the first reader, for a graph input); new values `<value>_<label>`."""
    factor = factor.astype(value.dtype.numpy)
    scale = graph.add_constant(Value(names.fresh(f"{value.name}_{scale_label}"), const=factor))
    scaled = Value(names.fresh(f"{value.name}_{output_label}"), value.type)
    mul = Node("Mul", [value, scale], [scaled])
    if value.producer is not None:
        graph.insert_after(value.producer, mul)
    else:
        graph.insert_before(next(n for n in graph.nodes if n in readers), mul)
    for node in readers:
        node.set_input(0, scaled)
