"""ONNX -> IR. One of the two modules that touch protobuf (the other is onnx_export).

Loading runs, in order: read, check the protobuf is well formed (onnx_wellformed.py),
inline model-local functions (the IR has no function
table; inlining keeps the semantics), optional clean-up with onnx-graphsurgeon, shape
inference (ONNX's; ONNX Runtime's symbolic inference first when inputs have symbolic
dims), checks that name the offending node, then lowering.
Shape inference is best effort: real exported graphs often defeat it, so nothing here
depends on it succeeding.

Tensors in external data files are not read: each file is memory-mapped read-only and
its tensors become numpy views of the mapping (fileio.py), so a model of many GB costs
no memory until its weights are used, and export can point at the same bytes. Their
file is looked up beside the model (the working directory for bytes and ModelProtos);
a location outside that folder, a missing file or one too short for its tensors is a
ModelLoadError naming the file. Clean-up reads the data in (graphsurgeon needs it).
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
from .fileio import MappedFile, map_file, mapped_view
from .onnx_wellformed import SCHEMA_DOMAINS, check_wellformed
from .tensors import SparseTensor
from .types import MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type

_PROTOBUF_LIMIT = 2**31 - 1
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
    label, proto, folder = _read(source)
    check_wellformed(proto, label)
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    if cleanup:
        proto = _graphsurgeon_cleanup(_with_external_data(proto, folder, label), label)
    if infer_shapes:
        proto = _infer_shapes(proto)
    _check_ops(proto, label)
    with bulk_build():
        return _Importer(label, folder).model(proto)


def _read(source: str | os.PathLike | bytes | onnx.ModelProto) -> tuple[str, onnx.ModelProto, Path]:
    """The label for messages, the proto (external data not read) and the folder its data files are in."""
    if isinstance(source, onnx.ModelProto):
        return "<model>", source, Path()
    if isinstance(source, bytes):
        label, folder = "<bytes>", Path()
        try:
            proto = onnx.load_model_from_string(source)
        except (DecodeError, ValueError) as err:
            raise ModelLoadError(f"{label}: not an ONNX model ({err})") from None
    else:
        label = str(source)
        path = Path(source)
        folder = path.parent
        if not path.is_file():
            raise ModelLoadError(f"{label}: no such file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except DecodeError as err:
            raise ModelLoadError(f"{label}: not an ONNX model, or truncated ({err})") from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{label}: not an ONNX model (no graph or no opset import)")
    return label, proto, folder


def _with_external_data(proto: onnx.ModelProto, folder: Path, label: str) -> onnx.ModelProto:
    """`proto` with its external tensors read in (a copy when it has any)."""
    if not _uses_external_data(proto):
        return proto
    loaded = onnx.ModelProto()
    loaded.CopyFrom(proto)
    try:
        onnx.load_external_data_for_model(loaded, str(folder))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise ModelLoadError(f"{label}: cannot read external data: {err}") from None
    return loaded


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
    light = _inferred_without_weights(proto)
    return proto if light is None else _with_weights(light, proto)


def _inferred_without_weights(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """The copy of `proto` without weights (see _infer_shapes), inferred; None when even it is too big."""
    light = _without_weights(proto)
    if light.ByteSize() > _PROTOBUF_LIMIT:
        return None  # shapes come from calibration later
    if _has_symbolic_inputs(light):
        light = _ort_symbolic_inference(light)
    try:
        light = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort; the model is still valid without it
        pass
    return light


def _without_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` whose large float and external initializers are graph inputs of their type."""
    light = onnx.ModelProto()
    _copy_fields(proto, light, skip="graph")
    _copy_fields(proto.graph, light.graph, skip="initializer")
    inputs = {i.name for i in proto.graph.input}
    for tensor in proto.graph.initializer:
        external = tensor.data_location == onnx.TensorProto.EXTERNAL  # inference cannot read it anyway
        if external or (tensor.data_type in _FLOAT_TENSORS and int(np.prod(tensor.dims)) > _INLINE_WEIGHT_ELEMENTS):
            if tensor.name not in inputs:
                light.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            light.graph.initializer.append(tensor)
    return light


def _with_weights(light: onnx.ModelProto, proto: onnx.ModelProto) -> onnx.ModelProto:
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
    says nothing about are left out. The weights are never put back (only types are read).
    """
    light = _inferred_without_weights(proto)
    types: dict[str, Type] = {}
    for graph in _graphs(light.graph) if light is not None else ():
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
    return any(not isinstance(_dim(d), int) for i in proto.graph.input for d in i.type.tensor_type.shape.dim)


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
    module.onnx = _OnnxWithoutSaving()  # when inference is incomplete it saves the model into the working folder
    return module.SymbolicShapeInference


class _OnnxWithoutSaving:
    """The `onnx` module as SymbolicShapeInference sees it, less `save_model`: its debug dump
    ("sym_shape_infer_temp.onnx" plus an external data file per run) would litter the user's
    working folder each time a real graph defeats it."""

    def __getattr__(self, name: str):
        return getattr(onnx, name)

    @staticmethod
    def save_model(*args, **kwargs) -> None:
        pass


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
        if domain in SCHEMA_DOMAINS and not onnx.defs.has(node.op_type, domain):
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

    def __init__(self, label: str, folder: Path) -> None:
        self.label = label
        self.folder = folder
        self._files: dict[Path, MappedFile] = {}

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
            data = self.tensor(tensor)
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
            AttrKind.TENSOR: lambda: self.tensor(proto.t),
            AttrKind.GRAPH: lambda: self.graph(proto.g, scope),
            AttrKind.SPARSE_TENSOR: lambda: _sparse(proto.sparse_tensor),
            AttrKind.TYPE_PROTO: lambda: _type(proto.tp),
            AttrKind.FLOATS: lambda: proto.floats,
            AttrKind.INTS: lambda: proto.ints,
            AttrKind.STRINGS: lambda: [_text(s) for s in proto.strings],
            AttrKind.TENSORS: lambda: [self.tensor(t) for t in proto.tensors],
            AttrKind.GRAPHS: lambda: [self.graph(g, scope) for g in proto.graphs],
            AttrKind.SPARSE_TENSORS: lambda: [_sparse(s) for s in proto.sparse_tensors],
            AttrKind.TYPE_PROTOS: lambda: [_type(t) for t in proto.type_protos],
        }
        return Attr(kind, readers[kind]())

    def tensor(self, proto: onnx.TensorProto) -> np.ndarray:
        if proto.data_location != onnx.TensorProto.EXTERNAL:
            return _tensor(proto)
        info = {entry.key: entry.value for entry in proto.external_data}
        location = info.get("location", "")
        where = f"{self.label}: tensor {proto.name!r}"
        if not location or Path(location).is_absolute() or ".." in Path(location).parts:
            raise ModelLoadError(f"{where}: external data location {location!r} is not a path inside the model's folder")
        path = self.folder / location
        dtype = DType(proto.data_type)
        shape = tuple(proto.dims)
        plain = dtype != DType.STRING and dtype.bitwidth == 8 * dtype.numpy.itemsize  # bytes as numpy lays them out
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else int(np.prod(shape)) * dtype.numpy.itemsize
        if plain and length != int(np.prod(shape)) * dtype.numpy.itemsize:
            raise ModelLoadError(f"{where}: external data length {length} does not match its shape {list(shape)} "
                                 f"of {dtype.short_name}")
        if length == 0:
            return np.zeros(shape, dtype.numpy)
        mapped = self._mapping(path, where)
        if offset + length > len(mapped):
            raise ModelLoadError(f"{where} needs bytes {offset}..{offset + length} of {path}, which has only "
                                 f"{len(mapped)} bytes (truncated?)")
        if plain:
            return mapped_view(mapped, dtype.numpy, shape, offset)
        inline = onnx.TensorProto(name=proto.name, data_type=proto.data_type, dims=shape,
                                  raw_data=mapped[offset:offset + length])
        return _tensor(inline)

    def _mapping(self, path: Path, where: str) -> MappedFile:
        if path not in self._files:
            if not path.is_file():
                raise ModelLoadError(f"{where} is stored in {path}, which does not exist")
            if path.stat().st_size == 0:
                raise ModelLoadError(f"{where} is stored in {path}, which is empty (truncated?)")
            self._files[path] = map_file(path)
        return self._files[path]


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
    return tuple(_dim(d) for d in proto.shape.dim)


def _dim(dim) -> int | str | None:
    """A dim as exporters write it: a positive size, a name that ties equal names together, or
    None for a dynamic dim of its own. paddle2onnx and tf2onnx write dynamic dims as -1 or 0
    values, or as placeholder names ("?", "-1") that must not tie two dims into one."""
    if dim.HasField("dim_value"):
        return dim.dim_value if dim.dim_value > 0 else None
    name = dim.dim_param.strip() if dim.HasField("dim_param") else ""
    return name if name and name not in _PLACEHOLDER_DIMS and not name.lstrip("-").isdigit() else None


_PLACEHOLDER_DIMS = frozenset({"?", "*"})
