"""IR -> text (.qir). The grammar that reads it back is qir.lark; parser.py builds the IR.

Output is deterministic: nodes in graph order, attributes in their order, floats in
the shortest form that reads back to the same bits. Large constants are printed as a
summary `blob("key", min=..., max=..., digest=...)`; when a weights dict is given the
printer fills it with the elided arrays, so the dump and that dict (saved as .npz)
parse back to the same model. Error statistics are rounded to what a reader needs and
print the same once parsed back.
"""

from __future__ import annotations

import hashlib

import json
import math
import re
from collections.abc import Iterable, MutableMapping
from typing import Literal

import numpy as np

from .attributes import Attr, AttrKind
from .core import Graph, Model, Node, Value
from .dtypes import DType
from .errorstats import ErrorStats
from .naming import unique_names
from .quant import QuantParams
from .tensors import ElidedTensor, SparseTensor, digest, value_range
from .types import MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type

WeightsMode = Literal["inline", "summary"]
DEFAULT_MAX_INLINE = 16

_BARE_NAME = re.compile(r"[A-Za-z0-9_.\-/]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORDS = frozenset(
    {"model", "range", "weights", "opset", "metadata", "graph", "const", "default", "return", "none", "name",
     "seq", "opt", "map", "sparse", "q", "type", "tensor", "blob", "bytes", "inf", "nan"}
)


def print_model(
    model: Model,
    *,
    weights: WeightsMode | MutableMapping[str, np.ndarray] = "summary",
    max_inline: int = DEFAULT_MAX_INLINE,
    weights_file: str | None = None,
    annotations: bool = True,
) -> str:
    """The text of `model`.

    weights: "inline" prints every constant in full; "summary" elides constants of
    more than `max_inline` elements; a dict elides them too and receives their data,
    keyed as the blobs name them. `weights_file` adds a `weights "..."` line telling the
    parser where that data was saved. `annotations=False` leaves out what passes noted
    on values and nodes (meta, observed ranges, errors): the computation alone.
    """
    printer = _Printer(unique_names(model.graph), weights, max_inline, annotations)
    lines = []
    if weights_file is not None:
        lines.append(f"weights {quote(weights_file)}")
    lines.append(_model_header(model))
    printer.graph(model.graph, 0, lines)
    return "\n".join(lines) + "\n"


def computation_digest(model: Model) -> str:
    """A hash of what `model` computes (its text without annotations, large constants by content
    hash): two models with equal digests give the same values for the same feeds, whatever
    passes noted on them."""
    return hashlib.sha256(print_model(model, weights="summary", annotations=False).encode()).hexdigest()


def quote(text: str) -> str:
    return json.dumps(text)


def value_ref(name: str) -> str:
    return "%" + (name if _BARE_NAME.fullmatch(name) else quote(name))


def graph_ref(name: str) -> str:
    return "@" + (name if _BARE_NAME.fullmatch(name) else quote(name))


def ident(text: str) -> str:
    return text if _IDENT.fullmatch(text) and text not in _KEYWORDS else quote(text)


def format_type(type_: Type | None) -> str:
    if isinstance(type_, TensorType):
        return type_.dtype.short_name + _format_shape(type_.shape)
    if isinstance(type_, SparseTensorType):
        return f"sparse<{type_.dtype.short_name}{_format_shape(type_.shape)}>"
    if isinstance(type_, SequenceType):
        return f"seq<{format_type(type_.elem)}>"
    if isinstance(type_, OptionalType):
        return f"opt<{format_type(type_.elem)}>"
    if isinstance(type_, MapType):
        return f"map<{type_.key.short_name}, {format_type(type_.value)}>"
    raise TypeError(f"cannot print type {type_!r}")


def _format_shape(shape: tuple | None) -> str:
    if shape is None:
        return ""
    return "[" + ",".join("?" if d is None else str(d) if isinstance(d, int) else _dim_name(d) for d in shape) + "]"


def _dim_name(name: str) -> str:
    """Keywords need no quotes here: the grammar accepts none inside a shape."""
    return name if _IDENT.fullmatch(name) else quote(name)


def format_float(value: float) -> str:
    """Shortest text that reads back to the same float32 (or float64) value."""
    text = str(value if isinstance(value, np.floating) else np.float32(value))
    return text if text in ("inf", "-inf", "nan") or any(c in text for c in ".e") else text + ".0"


def _format_elements(array: np.ndarray, dtype: DType) -> Iterable[str]:
    flat = array.reshape(-1)
    if dtype == DType.STRING:
        return (quote(_as_text(s)) for s in flat)
    if dtype == DType.DOUBLE:
        return (format_float(np.float64(v)) for v in flat)
    if dtype.is_float:
        return (format_float(np.float32(v)) for v in flat.astype(np.float32))
    return (str(int(v)) for v in flat.astype(np.int64 if dtype != DType.UINT64 else np.uint64))


def _as_text(item: bytes | str) -> str:
    return item.decode("utf-8", errors="surrogateescape") if isinstance(item, bytes) else item


def _model_header(model: Model) -> str:
    parts = ["model", f"ir_version={model.ir_version}"]
    opsets = ", ".join(f"{_domain(d)}={v}" for d, v in model.opset_imports.items())
    parts.append(f"opset{{{opsets}}}")
    for key, value in (
        ("producer", model.producer_name),
        ("producer_version", model.producer_version),
        ("domain", model.domain),
        ("doc", model.doc_string),
    ):
        if value:
            parts.append(f"{key}={quote(value)}")
    if model.model_version:
        parts.append(f"model_version={model.model_version}")
    if model.metadata:
        entries = ", ".join(f"{quote(k)}={quote(v)}" for k, v in model.metadata.items())
        parts.append(f"metadata{{{entries}}}")
    return " ".join(parts)


def _annotations(meta: dict) -> str:
    """` meta{...}` with the annotations passes leave on a node or value, sorted by key.

    Only plain literals print; anything else in `meta` is an analysis cache, which a
    reparsed model recomputes, so it is left out rather than refused.
    """
    entries = [f"{ident(key)}={text}" for key in sorted(meta) if (text := _meta_literal(meta[key])) is not None]
    return f" meta{{{', '.join(entries)}}}" if entries else ""


def _meta_literal(value: object) -> str | None:
    """`value` in the literal syntax of attributes, plus true/false; None if it has none.

    A float keeps all 64 bits (float attributes are float32 and print as such).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return format_float(np.float64(value))
    if isinstance(value, str):
        return quote(value)
    return None


def _error_stats(error: ErrorStats) -> str:
    """`err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312>`: decibels to 0.1, the cosine
    to 5 decimals, the error to 3 significant digits. Rounding a rounded figure changes
    nothing, so a parsed dump prints the same."""
    cosine = _rounded(round(error.cosine, 5))
    max_abs = float(f"{error.max_abs_error:.3g}")
    if math.isinf(max_abs) and math.isfinite(error.max_abs_error):  # 1.8e+308 overflows: keep such an error whole
        max_abs = error.max_abs_error
    decibels = f"sqnr={_decibels(error.sqnr_db)}, added={_decibels(error.added_db)}"
    return f"err<{decibels}, cos={cosine}, max={_rounded(max_abs)}>"


def _decibels(value: float) -> str:
    """`31.2dB`; a figure that is not finite has no unit: `inf`, `-inf`, `nan`."""
    text = _rounded(round(value, 1))
    return text + "dB" if math.isfinite(value) else text


def _rounded(value: float) -> str:
    return format_float(np.float64(value + 0.0))  # + 0.0 turns a rounded -0.0 into 0.0


def _domain(domain: str) -> str:
    """The default domain "" prints as bare `ai.onnx`; a literal "ai.onnx" is quoted to stay distinct."""
    if not domain:
        return "ai.onnx"
    bare = domain != "ai.onnx" and all(_IDENT.fullmatch(p) and p not in _KEYWORDS for p in domain.split("."))
    return domain if bare else quote(domain)


class _Printer:
    def __init__(
        self,
        names: dict[Value, str],
        weights: WeightsMode | MutableMapping[str, np.ndarray],
        max_inline: int,
        annotations: bool = True,
    ) -> None:
        self.names = names
        self.annotations = annotations
        self.weights = weights
        self.max_inline = max_inline
        self.blob_keys: set[str] = set()

    def ref(self, value: Value | None) -> str:
        return "none" if value is None else value_ref(self.names[value])

    def graph(self, graph: Graph, depth: int, lines: list[str]) -> None:
        pad = "  " * depth
        inputs = ", ".join(self.decl(v) for v in graph.inputs)
        lines.append(f"{pad}graph {graph_ref(graph.name)}({inputs}) {{")
        inner = pad + "  "
        for value in graph.constants:
            data = self.tensor_data(value.const, self.names[value])
            if value in graph.inputs:
                lines.append(f"{inner}default {self.ref(value)} = {data}")
            else:
                quant = f" {self.quant(value.quant)}" if value.quant else ""
                lines.append(f"{inner}const {self.ref(value)}: {format_type(value.type)}{quant} = {data}")
        for node in graph.nodes:
            self.node(node, depth + 1, lines)
        lines.append(f"{inner}return {', '.join(self.ref(v) for v in graph.outputs)}".rstrip())
        lines.append(f"{pad}}}")

    def decl(self, value: Value) -> str:
        text = self.ref(value)
        if value.type is not None:
            text += f": {format_type(value.type)}"
        if value.quant is not None:
            text += f" {self.quant(value.quant)}"
        if not self.annotations:
            return text
        if value.observed_range is not None:
            text += f" range=[{', '.join(format_float(b) for b in value.observed_range)}]"
        if value.error is not None:
            text += f" {_error_stats(value.error)}"
        return text + _annotations(value.meta)

    def node(self, node: Node, depth: int, lines: list[str]) -> None:
        results = ", ".join(self.decl(v) for v in node.outputs) or "()"
        op = ident(node.op_type)
        if node.domain:
            op = f"{_domain(node.domain)}::{op}"
        operands = ", ".join(self.ref(v) for v in node.inputs)
        head = f"{'  ' * depth}{results} = {op}({operands})"
        tail = (f" name={quote(node.name)}" if node.name else "") + (_annotations(node.meta) if self.annotations else "")
        if not node.attributes:
            lines.append(head + tail)
        elif not any(True for _ in node.subgraphs()):
            attrs = ", ".join(f"{ident(k)}={self.attr(a, node, k, depth)}" for k, a in node.attributes.items())
            lines.append(f"{head} {{{attrs}}}{tail}")
        else:
            lines.append(head + " {")
            items = list(node.attributes.items())
            for i, (key, attr) in enumerate(items):
                text = self.attr(attr, node, key, depth + 1)
                comma = "," if i < len(items) - 1 else ""
                lines.append(f"{'  ' * (depth + 1)}{ident(key)}={text}{comma}")
            lines.append(f"{'  ' * depth}}}{tail}")

    def attr(self, attr: Attr, node: Node, key: str, depth: int) -> str:
        blob_key = f"{self.names[node.outputs[0]] if node.outputs else node.name}:{key}"
        if attr.kind.is_list:
            if not attr.value:
                return f"{attr.kind.name.lower()}[]"
            items = [
                self.scalar_attr(attr.kind.element, v, f"{blob_key}.{i}", depth)
                for i, v in enumerate(attr.value)
            ]
            return "[" + ", ".join(items) + "]"
        return self.scalar_attr(attr.kind, attr.value, blob_key, depth)

    def scalar_attr(self, kind: AttrKind, value, blob_key: str, depth: int) -> str:
        if kind == AttrKind.INT:
            return str(value)
        if kind == AttrKind.FLOAT:
            return format_float(value)
        if kind == AttrKind.STRING:
            return quote(value)
        if kind == AttrKind.TENSOR:
            return self.tensor_literal(value, blob_key)
        if kind == AttrKind.SPARSE_TENSOR:
            return self.sparse(value, blob_key)
        if kind == AttrKind.TYPE_PROTO:
            return f"type<{format_type(value)}>"
        lines: list[str] = []
        self.graph(value, depth, lines)
        return "\n".join(lines).lstrip()

    def sparse(self, sparse: SparseTensor, blob_key: str) -> str:
        dtype = _data_dtype(sparse.values)
        shape = _format_shape(sparse.dims)
        values = self.tensor_literal(sparse.values, f"{blob_key}.values")
        indices = self.tensor_literal(sparse.indices, f"{blob_key}.indices")
        return f"sparse<{dtype.short_name}{shape}>({values}, {indices})"

    def tensor_literal(self, data: np.ndarray | ElidedTensor, blob_key: str) -> str:
        dtype = _data_dtype(data)
        type_ = format_type(TensorType(dtype, tuple(data.shape)))
        return f"tensor<{type_}>{self.tensor_data(data, blob_key)}"

    def tensor_data(self, data: np.ndarray | ElidedTensor, blob_key: str) -> str:
        if isinstance(data, ElidedTensor):
            return _blob(data)
        dtype = DType.from_numpy(data.dtype)
        elide = self.weights != "inline" and data.size > self.max_inline and dtype != DType.STRING
        if elide:
            blob_key = self.unique_key(blob_key)
            if not isinstance(self.weights, str):
                self.weights[blob_key] = data
            lo_hi = value_range(data)
            return _blob(ElidedTensor(dtype, tuple(data.shape), blob_key, digest(data), *(lo_hi or (None, None))))
        if dtype.numpy.kind == "c":
            return f"bytes({quote(np.ascontiguousarray(data).tobytes().hex())})"
        return "[" + ", ".join(_format_elements(data, dtype)) + "]"

    def unique_key(self, key: str) -> str:
        """`key`, or `key#n` if an earlier blob took it (node names, "a:b" names and keys can meet)."""
        unique, n = key, 0
        while unique in self.blob_keys:
            n += 1
            unique = f"{key}#{n}"
        self.blob_keys.add(unique)
        return unique

    def quant(self, quant: QuantParams) -> str:
        fields = [quant.dtype.short_name]
        if quant.axis is not None:
            fields.append(f"axis={quant.axis}")
        if quant.block_size is not None:
            fields.append(f"block={quant.block_size}")
        for key, array, dtype in (("scale", quant.scale, DType.FLOAT), ("zp", quant.zero_point, quant.dtype)):
            if array.ndim == 0:
                text = next(iter(_format_elements(array, dtype)))
            elif array.ndim == 1:
                text = "[" + ", ".join(_format_elements(array, dtype)) + "]"
            else:
                text = f"tensor<{format_type(TensorType(dtype, array.shape))}>[{', '.join(_format_elements(array, dtype))}]"
            fields.append(f"{key}={text}")
        return f"q<{', '.join(fields)}>"


def _data_dtype(data: np.ndarray | ElidedTensor) -> DType:
    return data.dtype if isinstance(data, ElidedTensor) else DType.from_numpy(data.dtype)


def _blob(elided: ElidedTensor) -> str:
    fields = [quote(elided.key)]
    for key, bound in (("min", elided.min), ("max", elided.max)):
        if bound is not None:  # a hand-edited dump may give one bound only
            fields.append(f"{key}={_format_bound(bound, elided.dtype)}")
    fields.append(f"digest={quote(elided.digest)}")
    return f"blob({', '.join(fields)})"


def _format_bound(value: float, dtype: DType) -> str:
    if dtype.is_float:
        return format_float(np.float64(value) if dtype == DType.DOUBLE else np.float32(value))
    return str(int(value))
