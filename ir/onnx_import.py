"""ONNX -> IR. One of the two modules that touch protobuf (the other is onnx_export).

Loading runs, in order: read (with external data), inline model-local functions (the
IR has no function table; inlining keeps the semantics), optional clean-up with
onnx-graphsurgeon, shape inference (ONNX's; ONNX Runtime's symbolic inference first when
inputs have symbolic dims), checks that name the offending node, then lowering.
Shape inference is best effort: real exported graphs often defeat it, so nothing here
depends on it succeeding.
"""

from __future__ import annotations

import functools
import heapq
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from .attributes import Attr, AttrKind
from .core import Graph, Model, Node, Value, bulk_build
from .dtypes import DType
from .errors import ModelLoadError
from .tensors import SparseTensor
from .types import MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type

_PROTOBUF_LIMIT = 2**31 - 1
_SCHEMA_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")
_FLOAT_TENSORS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                            onnx.TensorProto.DOUBLE})
_INLINE_WEIGHT_ELEMENTS = 1024  # float initializers up to this size go to shape inference with their data


def load_model(
    source: str | os.PathLike | bytes | onnx.ModelProto,
    *,
    cleanup: bool = False,
    infer_shapes: bool = True,
) -> Model:
    """Read an ONNX model (path, bytes or ModelProto) into the IR.

    `cleanup` folds constants, drops dead nodes and re-sorts with onnx-graphsurgeon.
    """
    label, proto = _read(source)
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    if cleanup:
        proto = _graphsurgeon_cleanup(proto, label)
    if infer_shapes:
        proto = _infer_shapes(proto)
    _check_ops(proto, label)
    with bulk_build():
        return _Importer(label).model(proto)


def _read(source: str | os.PathLike | bytes | onnx.ModelProto) -> tuple[str, onnx.ModelProto]:
    if isinstance(source, onnx.ModelProto):
        return "<model>", source
    if isinstance(source, bytes):
        label = "<bytes>"
        try:
            proto = onnx.load_model_from_string(source)
        except (DecodeError, ValueError) as err:
            raise ModelLoadError(f"{label}: not an ONNX model ({err})") from None
    else:
        label = str(source)
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"{label}: no such file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
            if _uses_external_data(proto):
                onnx.load_external_data_for_model(proto, str(path.parent))
        except DecodeError as err:
            raise ModelLoadError(f"{label}: not an ONNX model, or truncated ({err})") from None
        except (OSError, ValueError, onnx.checker.ValidationError) as err:
            raise ModelLoadError(f"{label}: cannot read external data: {err}") from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{label}: not an ONNX model (no graph or no opset import)")
    return label, proto


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(proto)
    )


def _graphsurgeon_cleanup(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    try:
        graph = gs.import_onnx(proto)
        graph.fold_constants().cleanup().toposort()
        return gs.export_onnx(graph)
    except Exception as err:  # graphsurgeon raises bare exceptions of many kinds
        raise ModelLoadError(f"{label}: import-time clean-up failed: {err}") from None


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with the types shape inference finds; best effort (the model stays valid without).

    Inference runs on a copy whose large float initializers are typed graph inputs: both
    inferences serialize the model, and weights are most of it (4.6 s of a BERT-base
    import went there) while only their shapes matter. Small and integer constants stay,
    since data propagation reads them (Reshape targets, Slice bounds).
    """
    light, weights = _without_weights(proto)
    if light.ByteSize() > _PROTOBUF_LIMIT:
        return proto  # too big to serialize even without weights; shapes come from calibration later
    if _has_symbolic_inputs(light):
        light = _ort_symbolic_inference(light)
    try:
        light = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort; the model is still valid without it
        pass
    return _with_weights(light, proto, weights)


def _without_weights(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    """A copy of `proto` whose large float initializers are graph inputs of their type; their names."""
    light = onnx.ModelProto()
    _copy_fields(proto, light, skip="graph")
    _copy_fields(proto.graph, light.graph, skip="initializer")
    inputs = {i.name for i in proto.graph.input}
    weights = set()
    for tensor in proto.graph.initializer:
        if tensor.data_type in _FLOAT_TENSORS and int(np.prod(tensor.dims)) > _INLINE_WEIGHT_ELEMENTS:
            weights.add(tensor.name)
            if tensor.name not in inputs:
                light.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            light.graph.initializer.append(tensor)
    return light, weights


def _with_weights(light: onnx.ModelProto, proto: onnx.ModelProto, weights: set[str]) -> onnx.ModelProto:
    """The inferred `light` model with `proto`'s inputs and initializers back, in their order."""
    del light.graph.input[:]
    light.graph.input.extend(proto.graph.input)
    del light.graph.initializer[:]
    light.graph.initializer.extend(proto.graph.initializer)
    return light


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def infer_types(proto: onnx.ModelProto) -> dict[str, Type]:
    """The types shape inference (as run at load) finds for the values of every graph, by name.

    Lets the IR refresh its types after passes rewrote the graph; values inference
    says nothing about are left out.
    """
    types: dict[str, Type] = {}
    for graph in _graphs(_infer_shapes(proto).graph):
        for info in (*graph.value_info, *graph.output):
            type_ = _type(info.type)
            if type_ is not None:
                types[info.name] = type_
    return types


def _graphs(graph: onnx.GraphProto):
    """`graph` and, depth first, every graph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in _attribute_graphs(attr):
                yield from _graphs(sub)


def _attribute_graphs(attr: onnx.AttributeProto):
    return [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs


def _has_symbolic_inputs(proto: onnx.ModelProto) -> bool:
    return any(
        d.HasField("dim_param") for i in proto.graph.input for d in i.type.tensor_type.shape.dim
    )


def _ort_symbolic_inference(proto: onnx.ModelProto) -> onnx.ModelProto:
    inference = _symbolic_shape_inference()
    if inference is None:
        return proto
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            inferred = inference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
        except Exception:  # fails on many real graphs; ONNX's inference still runs
            return proto
    return inferred if inferred is not None else proto


@functools.cache
def _symbolic_shape_inference():
    """ONNX Runtime's SymbolicShapeInference, loaded from its file: importing the
    `onnxruntime.tools` package imports torch when installed (1.7 s, 200 MB) for nothing."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "tools" / "symbolic_shape_infer.py"
    file_spec = importlib.util.spec_from_file_location("_qcompiler_symbolic_shape_infer", path)
    if file_spec is None or not path.exists():
        return None
    module = importlib.util.module_from_spec(file_spec)
    try:
        file_spec.loader.exec_module(module)
    except Exception:  # a runtime without the tool: ONNX's own inference still runs
        return None
    return module.SymbolicShapeInference


def _check_ops(proto: onnx.ModelProto, label: str) -> None:
    """Every node's domain must be imported, and standard-domain ops must exist."""
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
    for node in (node for graph in _graphs(proto.graph) for node in graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        where = f"{label}: node {_node_label(node)}"
        if domain not in opsets:
            imported = ", ".join(sorted(d or "ai.onnx" for d in opsets))
            raise ModelLoadError(
                f"{where} uses domain {domain or 'ai.onnx'!r}, which the model does not import "
                f"(it imports: {imported})"
            )
        if domain in _SCHEMA_DOMAINS and not onnx.defs.has(node.op_type, domain):
            raise ModelLoadError(f"{where}: {node.op_type} is not an operator of domain {domain or 'ai.onnx'!r}")


def _node_label(node: onnx.NodeProto) -> str:
    name = node.name or (node.output[0] if node.output else "")
    return f"{name!r} ({node.op_type})"


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    defined |= {name for node in graph.node for name in node.output}
    return {name for node in graph.node for name in _reads(node)} - defined | (
        {o.name for o in graph.output} - defined
    )


def _reads(node: onnx.NodeProto) -> set[str]:
    names = {name for name in node.input if name}
    for attr in node.attribute:
        for sub in _attribute_graphs(attr):
            names |= _free_names(sub)
    return names


def _sorted_nodes(graph: onnx.GraphProto, label: str) -> list[onnx.NodeProto]:
    """The graph's nodes in dependency order (producers sometimes emit them unsorted)."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    reads = [_reads(node) for node in graph.node]
    if all(producer.get(name, -1) < i for i, names in enumerate(reads) for name in names):
        return list(graph.node)
    waiting = [{producer[n] for n in names if n in producer} for names in reads]
    dependents: dict[int, list[int]] = {i: [] for i in range(len(graph.node))}
    for i, deps in enumerate(waiting):
        for dep in deps:
            dependents[dep].append(i)
    ready = [i for i, deps in enumerate(waiting) if not deps]  # sorted: a valid heap
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)  # lowest index first keeps the file's order where it can
        order.append(i)
        for j in dependents[i]:
            waiting[j].discard(i)
            if not waiting[j]:
                heapq.heappush(ready, j)
    if len(order) < len(graph.node):
        stuck = [_node_label(graph.node[i]) for i, deps in enumerate(waiting) if deps][:5]
        raise ModelLoadError(f"{label}: graph {graph.name!r} has a cycle through nodes {', '.join(stuck)}")
    return [graph.node[i] for i in order]


class _Importer:
    """Lowers protobuf into IR objects, resolving names through nested scopes."""

    def __init__(self, label: str) -> None:
        self.label = label

    def model(self, proto: onnx.ModelProto) -> Model:
        opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
        graph = self.graph(proto.graph, scope={})
        return Model(
            graph,
            opsets,
            ir_version=proto.ir_version,
            producer_name=proto.producer_name,
            producer_version=proto.producer_version,
            domain=proto.domain,
            model_version=proto.model_version,
            doc_string=proto.doc_string,
            metadata={p.key: p.value for p in proto.metadata_props},
        )

    def graph(self, proto: onnx.GraphProto, scope: dict[str, Value]) -> Graph:
        scope = dict(scope)
        types = {vi.name: _type(vi.type) for vi in (*proto.value_info, *proto.output)}
        graph = Graph(proto.name or "main", doc_string=proto.doc_string)
        for vi in proto.input:
            value = Value(vi.name, _type(vi.type))
            graph.add_input(value)
            scope[vi.name] = value
        for tensor in proto.initializer:
            data = _tensor(tensor)
            if tensor.name in scope and scope[tensor.name].graph is graph:
                value = scope[tensor.name]  # an input with a default (IR version < 4 style)
                value.const = data
            else:
                value = Value(tensor.name, const=data)
                scope[tensor.name] = value
            graph.add_constant(value)
        for sparse in proto.sparse_initializer:
            dense = _densify(_sparse(sparse))
            value = Value(sparse.values.name, const=dense)
            scope[value.name] = value
            graph.add_constant(value)
        for node_proto in _sorted_nodes(proto, self.label):
            node = self.node(node_proto, scope, types)
            graph.append(node)
            for value in node.outputs:
                if value.name:
                    scope[value.name] = value
        outputs = []
        for vi in proto.output:
            value = self.lookup(scope, vi.name, f"graph @{graph.name} output")
            if value.type is None:
                value.type = _type(vi.type)
            outputs.append(value)
        graph.set_outputs(outputs)
        return graph

    def node(self, proto: onnx.NodeProto, scope: dict[str, Value], types: dict[str, Type | None]) -> Node:
        where = f"node {proto.name or proto.op_type!r}"
        inputs = [self.lookup(scope, name, where) if name else None for name in proto.input]
        attributes = {a.name: self.attribute(a, scope) for a in proto.attribute}
        outputs = [Value(name, types.get(name)) for name in proto.output]
        domain = "" if proto.domain == "ai.onnx" else proto.domain
        return Node(proto.op_type, inputs, outputs, attributes=attributes, domain=domain, name=proto.name)

    def lookup(self, scope: dict[str, Value], name: str, where: str) -> Value:
        try:
            return scope[name]
        except KeyError:
            raise ModelLoadError(
                f"{self.label}: {where} reads {name!r}, which nothing defines before it "
                "(a dangling input, or a cycle)"
            ) from None

    def attribute(self, proto: onnx.AttributeProto, scope: dict[str, Value]) -> Attr:
        kind = AttrKind(proto.type)
        if proto.ref_attr_name:
            raise ModelLoadError(f"{self.label}: attribute {proto.name!r} refers to a function attribute")
        readers = {
            AttrKind.FLOAT: lambda: proto.f,
            AttrKind.INT: lambda: proto.i,
            AttrKind.STRING: lambda: _text(proto.s),
            AttrKind.TENSOR: lambda: _tensor(proto.t),
            AttrKind.GRAPH: lambda: self.graph(proto.g, scope),
            AttrKind.SPARSE_TENSOR: lambda: _sparse(proto.sparse_tensor),
            AttrKind.TYPE_PROTO: lambda: _type(proto.tp),
            AttrKind.FLOATS: lambda: proto.floats,
            AttrKind.INTS: lambda: proto.ints,
            AttrKind.STRINGS: lambda: [_text(s) for s in proto.strings],
            AttrKind.TENSORS: lambda: [_tensor(t) for t in proto.tensors],
            AttrKind.GRAPHS: lambda: [self.graph(g, scope) for g in proto.graphs],
            AttrKind.SPARSE_TENSORS: lambda: [_sparse(s) for s in proto.sparse_tensors],
            AttrKind.TYPE_PROTOS: lambda: [_type(t) for t in proto.type_protos],
        }
        return Attr(kind, readers[kind]())


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def _tensor(proto: onnx.TensorProto) -> np.ndarray:
    array = numpy_helper.to_array(proto)
    if proto.data_type == onnx.TensorProto.STRING:
        array = array.astype(object)
    expected = DType(proto.data_type).numpy
    return array if array.dtype == expected else array.view(expected)


def _sparse(proto: onnx.SparseTensorProto) -> SparseTensor:
    return SparseTensor(_tensor(proto.values), _tensor(proto.indices), tuple(proto.dims))


def _densify(sparse: SparseTensor) -> np.ndarray:
    dense = np.zeros(sparse.dims, dtype=sparse.values.dtype)
    if sparse.indices.ndim == 1:
        dense.reshape(-1)[sparse.indices] = sparse.values
    else:
        dense[tuple(sparse.indices.T)] = sparse.values
    return dense


def _type(proto: onnx.TypeProto) -> Type | None:
    which = proto.WhichOneof("value")
    if which == "tensor_type" and proto.tensor_type.elem_type:
        return TensorType(DType(proto.tensor_type.elem_type), _shape(proto.tensor_type))
    if which == "sparse_tensor_type" and proto.sparse_tensor_type.elem_type:
        return SparseTensorType(DType(proto.sparse_tensor_type.elem_type), _shape(proto.sparse_tensor_type))
    if which == "sequence_type":
        elem = _type(proto.sequence_type.elem_type)
        return SequenceType(elem) if elem is not None else None
    if which == "optional_type":
        elem = _type(proto.optional_type.elem_type)
        return OptionalType(elem) if elem is not None else None
    if which == "map_type":
        value = _type(proto.map_type.value_type)
        return MapType(DType(proto.map_type.key_type), value) if value is not None else None
    return None


def _shape(proto) -> tuple | None:
    if not proto.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in proto.shape.dim
    )
