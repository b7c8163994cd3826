"""Refresh value types from ONNX shape inference once passes have rewritten a graph.

Folding turns shape computations into constants, after which inference can prove static
shapes it could not before. Where inference finds nothing, the types the IR already
has stay: they often carry the user's symbolic dims ("batch") that inference drops.
"""

from __future__ import annotations

from .core import Model
from .errors import ExportError
from .naming import unique_names
from .onnx_export import to_onnx
from .onnx_import import infer_types
from .types import TensorType, Type


def refresh_types(model: Model) -> int:
    """Update the types of node outputs (every graph) from inference; returns how many changed.

    Graph inputs and constants keep theirs. A model whose constants were elided from a
    text dump cannot be exported for inference and is left as it is.
    """
    try:
        proto = to_onnx(model)
    except ExportError:
        return 0
    inferred = infer_types(proto)
    names = unique_names(model.graph)
    changed = 0
    for node in model.graph.all_nodes():
        for value in node.outputs:
            merged = merge_types(value.type, inferred.get(names[value]))
            if merged != value.type:
                value.type = merged
                changed += 1
    return changed


def merge_types(old: Type | None, new: Type | None) -> Type | None:
    """`new`, except where it knows less: per dim, a static size wins, then the old dim.

    A rank or dtype that disagrees is taken from `new`: inference reads the graph as it
    is now, the old type may predate a rewrite.
    """
    if new is None:
        return old
    if not (isinstance(old, TensorType) and isinstance(new, TensorType)):
        return new if old is None or type(old) is not type(new) else old
    if new.shape is None or old.shape is None or len(new.shape) != len(old.shape):
        return TensorType(new.dtype, new.shape if new.shape is not None else old.shape)
    dims = tuple(n if isinstance(n, int) or o is None else o for o, n in zip(old.shape, new.shape))
    return TensorType(new.dtype, dims)
