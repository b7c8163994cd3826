"""canonicalize: fold constants, bypass no-ops, drop dead nodes, refresh types.

1. Constant folding: nodes whose inputs are all constants (counting values folded in
   the same sweep) run together, one ONNX Runtime session per graph, and their read
   outputs become constants under the same names. A graph input with a default counts
   as constant only below IR version 4, where ONNX Runtime lets no feed override it;
   there every initializer must also be an input, so folded constants join the inputs
   and subgraphs (which cannot gain inputs) are not folded.
2. Never folded: QuantizeLinear/DequantizeLinear (weights stay quantized); Dropout
   (rule 4); random ops; nodes holding subgraphs; ops outside the default domain
   (contrib ops such as com.microsoft's are fused or quantized kernels of one execution
   provider: folding them would bake its numerics in); outputs that are not tensors of
   static shape and a numpy dtype (all ORT hands back); nodes writing more than
   max(`max_folded_elements`, elements they read). ConstantOfShape, Expand, Tile, Range
   and broadcasts blow small inputs up into tensors better computed at run time, while
   Transpose(weight) of any size still folds.
3. Shape and Size of a value whose type has a static shape (within Shape's start:end)
   fold from the type alone: torch's Shape->Gather->Unsqueeze->Concat->Reshape chains
   then fold by rule 1.
4. No-ops are bypassed: Identity; Dropout whose mask nobody reads, with training_mode
   absent or a constant false (is_test=1 before opset 7); Cast to the dtype it has;
   Reshape whose target keeps every dim (equal, 0 copying it, or the one -1);
   Transpose with the identity permutation; Concat, Sum, Max, Min or Mean of one input.
5. Graph outputs keep their names: a no-op making a graph output goes only when its
   input is made by a node of the same graph and is no graph output itself; that input
   takes the output's name and type. A graph input, constant or outer value has no
   producer to take the name over, so the node stays:

       x ─ Relu ─ %t ─ Identity ─ %y (output)    =>    x ─ Relu ─ %y (output)
       %w (const) ─ Identity ─ %y (output)       =>    unchanged

6. Dead nodes and unread constants go (dce.py).
7. A Sum of two inputs becomes an Add (the same broadcasting from opset 8; before, Sum
   and Add both need equal shapes): older exporters write residual connections as Sum,
   and only Add has a quantization rule and an integer kernel (QLinearAdd).
8. Types are refreshed by ONNX shape inference (ir.refresh_types): a static dim it
   finds wins, otherwise the dim the IR had stays.

All rules apply inside subgraphs too: folding there may read the enclosing graphs'
constants, and rule 5 never renames a value of an enclosing graph. Rounds repeat until
one changes nothing, at most `max_rounds`: folding lets inference prove static shapes,
which lets more Shape nodes fold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from qcompiler import ir
from qcompiler.ir import AttrKind, ElidedTensor, Graph, Model, Node, TensorType, Value

from ..infra.base import Pass, register_pass
from .dce import eliminate_dead_code

_NEVER_FOLD = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "Dropout",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
    }
)
_FIRST_OVERRIDABLE_IR = 4  # from this IR version on, a feed may override an input's default

IsFixed = Callable[[Value], bool]


@register_pass
class Canonicalize(Pass):
    """Fold constants, bypass no-ops (Identity, inference Dropout, ...), drop dead nodes, refresh types."""

    name = "canonicalize"

    @dataclass
    class Options:
        """fold_constants: rules 1-3; max_folded_elements: the size guard of rule 2;
        infer_shapes: rule 7; max_rounds: rounds before giving up on a fixpoint."""

        fold_constants: bool = True
        max_folded_elements: int = 1 << 18  # onnxscript's output limit; 1 MB of float32
        infer_shapes: bool = True
        max_rounds: int = 4

    def run(self, model: Model, ctx) -> bool:
        changed = False
        for round_index in range(self.options.max_rounds):
            if not self._round(model, ctx, first=round_index == 0):
                break
            changed = True
        return changed

    def _round(self, model: Model, ctx, first: bool) -> bool:
        """One sweep of the rules; types are refreshed on the first round and after rewrites
        (a round that rewrote nothing cannot change what inference finds)."""
        fixed = _fixed_initializer(model)
        changes = 0
        if self.options.fold_constants:
            foldable = [model.graph] if model.ir_version < _FIRST_OVERRIDABLE_IR else _graphs(model.graph)
            for graph in foldable:
                changes += self._fold(graph, model, fixed, ctx)
        changes += self._bypass_noops(model, fixed)
        changes += self._sums_to_adds(model)
        nodes, constants = eliminate_dead_code(model.graph)
        self.stats["dead_nodes"] += nodes
        self.stats["dead_constants"] += constants
        changes += nodes + constants
        if self.options.infer_shapes and (first or changes):
            refreshed = ir.refresh_types(model)
            self.stats["types_refreshed"] += refreshed
            changes += refreshed
        return changes > 0

    def _fold(self, graph: Graph, model: Model, fixed: IsFixed, ctx) -> int:
        """Rules 1-3 on one graph; returns how many nodes became constants."""
        planned: dict[Node, None] = {}
        computed: set[Value] = set()
        shapes = 0
        for node in graph.nodes:
            if not any(v.uses() for v in node.outputs):
                continue
            shape = _shape_from_type(node)
            if shape is not None:
                _become_constants(graph, model, {node.outputs[0]: shape})
                shapes += 1
            elif self._foldable(node, computed, fixed):
                planned[node] = None
                computed.update(node.outputs)
        wanted = [
            v for node in planned for v in node.outputs
            if any(not (isinstance(u.user, Node) and u.user in planned) for u in v.uses())
        ]
        self.stats["shapes_folded"] += shapes
        if not wanted:
            return shapes
        try:
            arrays = ir.evaluate(list(planned), wanted, model.opset_imports, model.ir_version)
        except ir.IRError as err:
            self.stats["fold_failures"] += 1
            ctx.report.setdefault(self.name, []).append(f"graph @{graph.name}: nothing evaluated: {err}")
            return shapes
        _become_constants(graph, model, dict(zip(wanted, arrays)))
        self.stats["folded"] += len(planned)
        return shapes + len(planned)

    def _foldable(self, node: Node, computed: set[Value], fixed: IsFixed) -> bool:
        if node.domain or node.op_type in _NEVER_FOLD or next(node.subgraphs(), None) is not None:
            return False
        if any(isinstance(a.value, ElidedTensor) for a in node.attributes.values()):
            return False  # a dump parsed without its weights: the data is not here
        if not all(v is None or v in computed or fixed(v) for v in node.inputs):
            return False
        return _within_size_guard(node, self.options.max_folded_elements)

    def _bypass_noops(self, model: Model, fixed: IsFixed) -> int:
        """Rules 4-5 in every graph; returns how many nodes went."""
        removed = 0
        for node in model.graph.all_nodes():
            check = _NOOPS.get(node.op_type)
            if node.domain or check is None or not node.inputs or node.inputs[0] is None:
                continue
            if check(node, fixed, model.opset) and _bypass(node):
                self.stats[_STAT.get(node.op_type, "noops")] += 1
                removed += 1
        return removed


    def _sums_to_adds(self, model: Model) -> int:
        """Rule 7; returns how many Sums became Adds."""
        sums = [n for n in model.graph.all_nodes() if n.op_type == "Sum" and not n.domain and len(n.inputs) == 2]
        for node in sums:
            node.op_type = "Add"
        self.stats["sums_to_adds"] += len(sums)
        return len(sums)


def _graphs(graph: Graph) -> Iterator[Graph]:
    """`graph`, then depth first its subgraphs (lazily: a graph is folded before its subgraphs are seen)."""
    yield graph
    for node in graph.nodes:
        for sub in node.subgraphs():
            yield from _graphs(sub)


def _fixed_initializer(model: Model) -> IsFixed:
    """Rule 1's constants: initializers whose data is here. Unlike `Value.is_const`, below IR
    version 4 an input's default is one (no feed may override it), and a Constant node's
    output is not: folding evaluates the Constant node itself."""
    defaults_fixed = model.ir_version < _FIRST_OVERRIDABLE_IR
    return lambda v: v.producer is None and isinstance(v.const, np.ndarray) and (defaults_fixed or v.is_const)


def _become_constants(graph: Graph, model: Model, arrays: dict[Value, np.ndarray]) -> None:
    """Readers of each value read a constant of its data instead, under the value's name."""
    for value, array in arrays.items():
        constant = Value(value.name, const=array)
        if model.ir_version < _FIRST_OVERRIDABLE_IR:
            graph.add_input(constant)
        value.replace_all_uses_with(graph.add_constant(constant))


def _static_size(type_: object) -> int | None:
    """Elements of a tensor type with a static shape and a numpy dtype, else None."""
    if not isinstance(type_, TensorType) or not type_.is_static or type_.dtype.numpy.kind == "V":
        return None
    return math.prod(type_.shape)


def _within_size_guard(node: Node, limit: int) -> bool:
    """Every read output has a known size, and all of them together stay within max(limit, what the node reads)."""
    written = 0
    for value in node.outputs:
        if value.uses():
            size = _static_size(value.type)
            if size is None:
                return False
            written += size
    read = sum(_static_size(v.type) or 0 for v in node.inputs if v is not None)
    read += sum(math.prod(a.value.shape) for a in node.attributes.values() if a.kind == AttrKind.TENSOR)
    return written <= max(limit, read)


def _shape_from_type(node: Node) -> np.ndarray | None:
    """Rule 3: the output of Shape/Size when the input's type fixes it, else None."""
    if node.domain or node.op_type not in ("Shape", "Size") or node.inputs[0] is None:
        return None
    dims = node.inputs[0].shape
    if dims is None:
        return None
    if node.op_type == "Shape":
        start, end = node.attr("start"), node.attr("end")
        dims = dims[start:end]
    if not all(isinstance(d, int) for d in dims):
        return None
    return np.array(dims if node.op_type == "Shape" else math.prod(dims), np.int64)


def _bypass(node: Node) -> bool:
    """Readers of the node's output read its input instead; False when rule 5 keeps the node."""
    source, out = node.inputs[0], node.outputs[0]
    if out.is_graph_output():
        if source.producer is None or source.graph is not node.graph or source.is_graph_output():
            return False
        source.name = out.name
        source.type = out.type if out.type is not None else source.type
    out.replace_all_uses_with(source)
    node.graph.remove(node)
    return True


def _inference_dropout(node: Node, fixed: IsFixed, opset: int) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return False
    if opset < 7:
        return node.attr("is_test", 0) != 0
    training = node.inputs[2] if len(node.inputs) > 2 else None
    return training is None or (fixed(training) and not training.const.any())


def _same_dtype_cast(node: Node, fixed: IsFixed, opset: int) -> bool:
    dtype = node.inputs[0].dtype
    return dtype is not None and dtype == node.attributes["to"].value


def _shape_keeping_reshape(node: Node, fixed: IsFixed, opset: int) -> bool:
    dims, target = node.inputs[0].shape, node.inputs[1] if len(node.inputs) > 1 else None
    if dims is None or target is None or not fixed(target) or target.const.ndim != 1:
        return False
    wanted = target.const.tolist()
    allowzero = node.attr("allowzero", 0) != 0
    if len(wanted) != len(dims) or 0 in dims or wanted.count(-1) > 1:
        return False
    return all(w == d or w == -1 or (w == 0 and not allowzero) for d, w in zip(dims, wanted))


def _identity_transpose(node: Node, fixed: IsFixed, opset: int) -> bool:
    if "perm" in node.attributes:
        perm = list(node.attributes["perm"].value)
        return perm == list(range(len(perm)))
    dims = node.inputs[0].shape  # no perm reverses the dims
    return dims is not None and len(dims) <= 1


def _one_input(node: Node, fixed: IsFixed, opset: int) -> bool:
    return len(node.inputs) == 1


_NOOPS: dict[str, Callable[[Node, IsFixed, int], bool]] = {
    "Identity": lambda node, fixed, opset: True,
    "Dropout": _inference_dropout,
    "Cast": _same_dtype_cast,
    "Reshape": _shape_keeping_reshape,
    "Transpose": _identity_transpose,
    **dict.fromkeys(("Concat", "Sum", "Max", "Min", "Mean"), _one_input),
}
_STAT = {"Identity": "identities", "Dropout": "dropouts"}
