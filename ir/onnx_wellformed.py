"""Checks that an ONNX protobuf is well formed before it is lowered: a corrupt file is a
ModelLoadError that names the file and the place, never an exception from deep inside.

A model file is untrusted bytes: protobuf parses many corruptions without complaint
and leaves fields that later code cannot use. Checked, in order of the walk:

1. Every string field (names, op types, domains, keys) is valid UTF-8 text; the place is
   the field's path, e.g. `graph.node[3].attribute[1].name`.
2. The main graph has at least one output.
3. Every tensor (initializers, Constant values, sparse parts) has an element type ONNX
   defines, dims that are not negative, and data that fits them: `raw_data` of exactly
   the bytes its dims and dtype need, typed fields that numpy can shape to the dims, or
   an external location (whose bounds the importer checks against the file).
4. Every value type (graph inputs, outputs, value_info) names an element type ONNX defines.
5. Every attribute has a type ONNX defines, and, where the op's schema declares the
   attribute, the type the schema asks for.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import numpy_helper

from .errors import ModelLoadError

_DEFINED_DTYPES = frozenset(v for v in onnx.TensorProto.DataType.values() if v != onnx.TensorProto.UNDEFINED)
_DEFINED_ATTRIBUTES = frozenset(v for v in onnx.AttributeProto.AttributeType.values()
                                if v != onnx.AttributeProto.UNDEFINED)
_PACKED_4BIT = frozenset({onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1})
SCHEMA_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")  # the domains onnx.defs has schemas for


def check_wellformed(proto: onnx.ModelProto, label: str) -> None:
    """Rules 1-5; raises ModelLoadError at the first problem."""
    for path, problem in _bad_strings(proto, "model"):
        raise ModelLoadError(f"{label}: {path} {problem}")
    if not proto.graph.output:
        raise ModelLoadError(f"{label}: graph {proto.graph.name!r} has no outputs")
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
    _check_graph(proto.graph, f"graph {proto.graph.name!r}", label, opsets)


def _bad_strings(message, path: str) -> Iterator[tuple[str, str]]:
    """(field path, problem) for each string field that is not valid text, depth first."""
    for field, value in message.ListFields():
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue  # numbers and bytes (raw tensor data) hold no text
        where = f"{path}.{field.name}"
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED
        items = list(enumerate(value)) if repeated else [(None, value)]
        for index, item in items:
            at = where if index is None else f"{where}[{index}]"
            if field.type == FieldDescriptor.TYPE_STRING:
                if not _is_text(item):
                    yield at, f"is not valid UTF-8 text ({_shown(item)})"
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _bad_strings(item, at)


def _is_text(item) -> bool:
    if not isinstance(item, str):
        return False
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: protobuf's lenient decoding of bad bytes
        return False
    return True


def _shown(item) -> str:
    raw = item if isinstance(item, bytes) else str(item).encode("utf-8", errors="surrogateescape")
    return repr(raw[:40])


def _check_graph(graph: onnx.GraphProto, where: str, label: str, opsets: dict[str, int]) -> None:
    for kind, infos in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for info in infos:
            _check_type(info.type, f"{where} {kind} {info.name!r}", label)
    for tensor in graph.initializer:
        _check_tensor(tensor, f"{where} initializer {tensor.name!r}", label)
    for sparse in graph.sparse_initializer:
        _check_sparse(sparse, f"{where} sparse initializer {sparse.values.name!r}", label)
    for index, node in enumerate(graph.node):
        node_where = f"{where} node {index} {node.name or node.op_type!r} ({node.op_type})"
        schema = _schema(node, opsets)
        for attr in node.attribute:
            _check_attribute(attr, schema, f"{node_where} attribute {attr.name!r}", label, opsets)


def _schema(node: onnx.NodeProto, opsets: dict[str, int]):
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in SCHEMA_DOMAINS or domain not in opsets:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opsets[domain], domain)
    except onnx.defs.SchemaError:
        return None  # unknown ops are the importer's to report, with the domain's list


def _check_attribute(attr: onnx.AttributeProto, schema, where: str, label: str, opsets: dict[str, int]) -> None:
    if attr.type not in _DEFINED_ATTRIBUTES:
        raise ModelLoadError(f"{label}: {where} has attribute type {attr.type}, which ONNX does not define")
    declared = schema.attributes.get(attr.name) if schema is not None else None
    if declared is not None and int(declared.type) != attr.type:
        want = onnx.AttributeProto.AttributeType.Name(int(declared.type))
        got = onnx.AttributeProto.AttributeType.Name(attr.type)
        raise ModelLoadError(f"{label}: {where} is {got}, but {schema.name} takes {want}")
    kinds = onnx.AttributeProto  # what the importer reads follows the declared type, set or not
    tensors = {kinds.TENSOR: [attr.t], kinds.TENSORS: list(attr.tensors)}.get(attr.type, [])
    sparse_tensors = {kinds.SPARSE_TENSOR: [attr.sparse_tensor], kinds.SPARSE_TENSORS: list(attr.sparse_tensors)}
    graphs = {kinds.GRAPH: [attr.g], kinds.GRAPHS: list(attr.graphs)}.get(attr.type, [])
    for index, tensor in enumerate(tensors):
        _check_tensor(tensor, f"{where} tensor {index}", label)
    for index, sparse in enumerate(sparse_tensors.get(attr.type, [])):
        _check_sparse(sparse, f"{where} sparse tensor {index}", label)
    for index, sub in enumerate(graphs):
        _check_graph(sub, f"{where} graph {index} {sub.name!r}", label, opsets)


def _check_type(type_proto: onnx.TypeProto, where: str, label: str) -> None:
    which = type_proto.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        tensor = getattr(type_proto, which)
        if tensor.elem_type != onnx.TensorProto.UNDEFINED and tensor.elem_type not in _DEFINED_DTYPES:
            raise ModelLoadError(f"{label}: {where} has element type {tensor.elem_type}, which ONNX does not define")
    elif which == "sequence_type":
        _check_type(type_proto.sequence_type.elem_type, where, label)
    elif which == "optional_type":
        _check_type(type_proto.optional_type.elem_type, where, label)
    elif which == "map_type":
        _check_type(type_proto.map_type.value_type, where, label)


def _check_sparse(sparse: onnx.SparseTensorProto, where: str, label: str) -> None:
    _check_tensor(sparse.values, f"{where} values", label)
    _check_tensor(sparse.indices, f"{where} indices", label)
    if any(d < 0 for d in sparse.dims):
        raise ModelLoadError(f"{label}: {where} has negative dims {list(sparse.dims)}")


def _check_tensor(tensor: onnx.TensorProto, where: str, label: str) -> None:
    if tensor.data_type not in _DEFINED_DTYPES:
        raise ModelLoadError(f"{label}: {where} has element type {tensor.data_type}, which ONNX does not define")
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{label}: {where} has negative dims {dims}")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return  # the importer checks the location and the file's length
    count = int(np.prod(dims, dtype=np.int64))
    if tensor.HasField("raw_data"):
        if tensor.data_type == onnx.TensorProto.STRING:
            raise ModelLoadError(f"{label}: {where} is a string tensor with raw_data, which ONNX does not allow")
        want = _raw_bytes(tensor.data_type, count)
        if len(tensor.raw_data) != want:
            raise ModelLoadError(f"{label}: {where} has {len(tensor.raw_data)} bytes of raw data, but dims {dims} "
                                 f"of {onnx.TensorProto.DataType.Name(tensor.data_type)} need {want}")
        return
    try:
        numpy_helper.to_array(tensor)
    except (ValueError, TypeError, IndexError) as err:
        raise ModelLoadError(f"{label}: {where} holds data that does not fit dims {dims} of "
                             f"{onnx.TensorProto.DataType.Name(tensor.data_type)}: {err}") from None


def _raw_bytes(data_type: int, count: int) -> int:
    if data_type in _PACKED_4BIT:
        return (count + 1) // 2
    return count * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
