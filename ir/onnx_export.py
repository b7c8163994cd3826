"""IR -> ONNX. With onnx_import, the only module that touches protobuf.

1. Files are staged in a temporary folder beside the target and renamed into place,
   the model and its data file together (fileio.replace_together), so a failed export
   leaves neither.
2. Models whose weights pass `LARGE_MODEL_BYTES` (or, when lowered, the 2 GB protobuf
   limit) are written with their tensors from 1 KB on in an external data file beside
   the model: a proto that size is slow to parse, and ONNX Runtime maps external data. Tensors are written to it one at a
   time as the proto is built, and the proto only points at them: memory never holds a
   serialized copy of the weights.
3. `ModelFile` exports a model to a temporary folder for ONNX Runtime, which needs a
   path when tensors are external. Tensors still mapped from the file they were loaded
   from (onnx_import) are pointed at there through a hard link, not copied; in a model
   past `LARGE_MODEL_BYTES` the others go to a data file of its own.
4. Export reads mapped tensors once, then drops their pages from the resident set
   (fileio.release_pages): a model of many GB exported for shape inference does not
   keep its weights resident twice.
5. Only graph inputs and outputs carry types; inner values get no value_info. ONNX
   Runtime infers them again, and given them it fuses more than pays: on a MiniLM-sized
   encoder it made every residual Add + LayerNormalization a SkipLayerNormalization,
   whose CPU kernel took 85 us where the pair took 21 (1 thread, ORT 1.32, AVX-512):
   the model ran 29% slower (int8 dynamic) and 6% (static); conv nets ran the same.
   Reading a written model back infers the types (onnx_import).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .attributes import Attr, AttrKind
from .core import Graph, Model, Node, Value, bulk_build
from .dtypes import DType
from .errors import ExportError
from .fileio import MappedFile, mapped_region, release_pages, replace_together
from .naming import unique_names
from .tensors import ElidedTensor, SparseTensor
from .types import MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type

_PROTOBUF_LIMIT = 2**31 - 1
LARGE_MODEL_BYTES = 256 << 20  # constants past this go to external data
_EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay in the proto
_PAGE_ALIGNED_BYTES = 1 << 20  # tensors from this size start on a page (ONNX Runtime maps them), others on 64 bytes


def to_onnx(model: Model) -> onnx.ModelProto:
    """Build a ModelProto (not checked; `save_model` checks)."""
    return _model_proto(model, (), None)


def _model_proto(model: Model, outputs: Sequence[Value], external: _ExternalData | None) -> onnx.ModelProto:
    """The model, with `outputs` (values of its main graph) added to the graph outputs and
    initializers sent to `external` when it takes them."""
    names = unique_names(model.graph)
    exporter = _Exporter(names, external)
    proto = onnx.ModelProto(
        ir_version=model.ir_version,  # kept as is: ORT treats initializer-inputs differently before IR v4
        opset_import=_opsets(model.opset_imports),
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
    )
    with bulk_build():
        exporter.graph(model.graph, proto.graph)  # built in place: a copy of a graph would copy its weights
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(exporter.value_info(v) for v in outputs if names[v] not in present)
    helper.set_model_props(proto, model.metadata)
    return proto


def constant_bytes(model: Model) -> int:
    """Bytes of the constants of every graph of `model` (what its weights weigh)."""
    graphs = [model.graph, *(g for node in model.graph.all_nodes() for g in node.subgraphs())]
    return sum(v.const.nbytes for g in graphs for v in g.constants if isinstance(v.const, np.ndarray))


def nodes_to_onnx(
    nodes: Sequence[Node], outputs: Sequence[Value], opset_imports: dict[str, int], ir_version: int
) -> onnx.ModelProto:
    """A model of just `nodes` (in order, none holding a subgraph) that reads only constants.

    The constants they read become initializers and `outputs` its outputs, so ONNX
    Runtime can evaluate a piece of a graph with no feeds (constant folding). Values
    keep the names `to_onnx` gives them.
    """
    produced = {value for node in nodes for value in node.outputs}
    read = dict.fromkeys(v for node in nodes for v in node.inputs if v is not None and v not in produced)
    for value in read:
        if value.const is None:
            raise ExportError(f"%{value.name} is not a constant, so the nodes reading it cannot run alone")
    names = unique_names(nodes[0].graph.root)
    exporter = _Exporter(names)
    graph = helper.make_graph(
        [exporter.node(node) for node in nodes],
        "evaluate",
        [],
        [exporter.value_info(v) for v in outputs],
        initializer=[exporter.tensor(v.const, names[v]) for v in read],
    )
    proto = helper.make_model(graph, opset_imports=_opsets(opset_imports))
    proto.ir_version = ir_version
    return proto


def _opsets(opset_imports: dict[str, int]) -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid(domain, version) for domain, version in opset_imports.items()]


def save_model(model: Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write `model` to `path`, checked by onnx.checker, atomically.

    `external_data` None means: only when the model is large (rule 2). The data file is
    `<model file name>.data` beside the model.
    """
    path = Path(path)
    if external_data is None:
        external_data = constant_bytes(model) > min(LARGE_MODEL_BYTES, _PROTOBUF_LIMIT - (64 << 20))
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        try:
            with _ExternalData(Path(staging), data_name, _EXTERNAL_MIN_BYTES if external_data else None,
                               link=False) as external:
                proto = _model_proto(model, (), external)
            if not external_data:
                _check(proto, None)
            staged.write_bytes(proto.SerializeToString())
        except (ValueError, OSError) as err:
            raise ExportError(f"{path}: cannot write the model: {err}") from None
        if external.bytes:
            _check(None, staged)
            replace_together([Path(staging) / data_name, staged], [path.parent / data_name, path])
        else:
            replace_together([staged], [path])


class ModelFile:
    """`model` exported to a temporary folder as `path`, for ONNX Runtime (rule 3).

    `outputs` (values of the main graph) are added to the graph outputs. `size` is what
    the model weighs as ONNX (proto and external tensors); `large` says its constants
    pass LARGE_MODEL_BYTES. The folder goes on close() or when the object is collected;
    ONNX Runtime sessions opened from it keep working (they map or copy what they read).
    """

    def __init__(self, model: Model, *, outputs: Sequence[Value] = ()) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="qcompiler-model-")
        folder = Path(self._folder.name)
        self.path = folder / "model.onnx"
        self.large = constant_bytes(model) > LARGE_MODEL_BYTES
        min_bytes = _EXTERNAL_MIN_BYTES if self.large else None
        try:
            with _ExternalData(folder, "model.onnx.data", min_bytes, link=True) as external:
                proto = _model_proto(model, outputs, external)
            serialized = proto.SerializeToString()
            self.size = len(serialized) + external.bytes
            self.path.write_bytes(serialized)
        except BaseException:
            self.close()
            raise

    def __fspath__(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._folder.cleanup()

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check(proto: onnx.ModelProto | None, path: Path | None) -> None:
    try:
        onnx.checker.check_model(str(path) if path is not None else proto)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise ExportError(f"the exported model does not pass onnx.checker: {first}") from None


class _ExternalData:
    """Where initializers go outside the proto: the file they are mapped from (hard-linked
    into `folder` when `link`), or data file `name` in `folder`, appended one at a time.

    `min_bytes` None writes nothing to the data file; `bytes` counts the tensor bytes
    pointed at from the proto.
    """

    def __init__(self, folder: Path, name: str, min_bytes: int | None, *, link: bool) -> None:
        self.folder, self.name, self.min_bytes, self.link = folder, name, min_bytes, link
        self.bytes = 0
        self._file = None
        self._links: dict[MappedFile, str | None] = {}

    def __enter__(self) -> _ExternalData:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def tensor(self, array: np.ndarray, name: str) -> onnx.TensorProto | None:
        """An initializer pointing at `array`'s bytes outside the proto, or None to keep it inline."""
        if array.dtype.kind in "OSU":
            return None  # strings have no raw layout
        dtype = DType.from_numpy(array.dtype)
        if dtype.bitwidth != 8 * array.dtype.itemsize:
            raw = np.frombuffer(numpy_helper.from_array(array).raw_data, np.uint8)  # packed sub-byte types
        else:
            raw = array
        region = mapped_region(raw) if self.link else None
        location = self._linked(region[0]) if region is not None else None
        if location is not None:
            offset = region[1]
        elif self.min_bytes is not None and raw.nbytes >= self.min_bytes:
            location, offset = self.name, self._append(raw)
        else:
            return None
        self.bytes += raw.nbytes
        tensor = onnx.TensorProto(name=name, data_type=int(dtype), dims=array.shape,
                                  data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(raw.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def _linked(self, mapped: MappedFile) -> str | None:
        """The name of a hard link to `mapped`'s file in the folder; None when the file was
        replaced since it was mapped, or cannot be linked (another file system)."""
        if mapped not in self._links:
            link = self.folder / f"{self.name}.{len(self._links) + 1}"
            try:
                stat = os.stat(mapped.path)
                if (stat.st_dev, stat.st_ino) != mapped.identity:
                    raise FileNotFoundError(mapped.path)
                os.link(mapped.path, link)
                self._links[mapped] = link.name
            except OSError:
                self._links[mapped] = None
        return self._links[mapped]

    def _append(self, raw: np.ndarray) -> int:
        if self._file is None:
            self._file = open(self.folder / self.name, "wb")
        align = 4096 if raw.nbytes >= _PAGE_ALIGNED_BYTES else 64
        offset = -(-self._file.tell() // align) * align
        self._file.write(bytes(offset - self._file.tell()))
        self._file.write(np.ascontiguousarray(raw).reshape(-1).view(np.uint8).data)
        release_pages(raw)
        return offset


class _Exporter:
    def __init__(self, names: dict[Value, str], external: _ExternalData | None = None) -> None:
        self.names = names
        self.external = external

    def name(self, value: Value | None) -> str:
        return "" if value is None else self.names[value]

    def graph(self, graph: Graph, proto: onnx.GraphProto | None = None) -> onnx.GraphProto:
        """`graph` as a GraphProto, filled into `proto` when given; initializers are added one at a time."""
        proto = proto if proto is not None else onnx.GraphProto()
        proto.name = graph.name
        proto.node.extend(self.node(node) for node in graph.nodes)
        proto.input.extend(self.value_info(v) for v in graph.inputs)
        proto.output.extend(self.value_info(v) for v in graph.outputs)
        for value in graph.constants:
            proto.initializer.append(self.initializer(value.const, self.names[value]))
        if graph.doc_string:
            proto.doc_string = graph.doc_string
        return proto  # no value_info for inner values: rule 5

    def node(self, node: Node) -> onnx.NodeProto:
        proto = helper.make_node(
            node.op_type,
            [self.name(v) for v in node.inputs],
            [self.name(v) for v in node.outputs],
            name=node.name or None,
            domain=node.domain or None,
        )
        proto.attribute.extend(self.attribute(name, attr) for name, attr in node.attributes.items())
        return proto

    def attribute(self, name: str, attr: Attr) -> onnx.AttributeProto:
        convert = {
            AttrKind.STRING: lambda s: s.encode("utf-8", errors="surrogateescape"),
            AttrKind.TENSOR: lambda t: self.tensor(t, ""),
            AttrKind.GRAPH: self.graph,
            AttrKind.SPARSE_TENSOR: self.sparse,
            AttrKind.TYPE_PROTO: _type_proto,
        }.get(attr.kind.element, lambda v: v)
        value = [convert(v) for v in attr.value] if attr.kind.is_list else convert(attr.value)
        return helper.make_attribute(name, value, attr_type=onnx.AttributeProto.AttributeType.Value(attr.kind.name))

    def initializer(self, data: np.ndarray | ElidedTensor, name: str) -> onnx.TensorProto:
        if self.external is not None and isinstance(data, np.ndarray):
            proto = self.external.tensor(data, name)
            if proto is not None:
                return proto
        return self.tensor(data, name)

    def tensor(self, data: np.ndarray | ElidedTensor, name: str) -> onnx.TensorProto:
        if isinstance(data, ElidedTensor):
            raise ExportError(
                f"constant {name or data.key!r} was elided from the text dump ({data.key!r}); "
                "give the weights file that was written with it"
            )
        proto = numpy_helper.from_array(data, name)
        release_pages(data)
        return proto

    def sparse(self, sparse: SparseTensor) -> onnx.SparseTensorProto:
        return helper.make_sparse_tensor(
            self.tensor(sparse.values, ""), self.tensor(sparse.indices, ""), list(sparse.dims)
        )

    def value_info(self, value: Value) -> onnx.ValueInfoProto:
        info = onnx.ValueInfoProto(name=self.names[value])
        if value.type is not None:
            info.type.CopyFrom(_type_proto(value.type))
        return info


def _type_proto(type_: Type) -> onnx.TypeProto:
    if isinstance(type_, TensorType):
        return helper.make_tensor_type_proto(int(type_.dtype), _dims(type_.shape))
    if isinstance(type_, SparseTensorType):
        return helper.make_sparse_tensor_type_proto(int(type_.dtype), _dims(type_.shape))
    if isinstance(type_, SequenceType):
        return helper.make_sequence_type_proto(_type_proto(type_.elem))
    if isinstance(type_, OptionalType):
        return helper.make_optional_type_proto(_type_proto(type_.elem))
    if isinstance(type_, MapType):
        return helper.make_map_type_proto(int(type_.key), _type_proto(type_.value))
    raise ExportError(f"cannot export type {type_!r}")


def _dims(shape: tuple | None) -> list | None:
    return None if shape is None else list(shape)
