"""IR -> ONNX. With onnx_import, the only module that touches protobuf.

Files are written to a temporary name and renamed into place, so a failed export
never leaves a partial model. Models whose weights pass the 2 GB protobuf limit are
written with their tensors in an external data file beside the model.
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
from .errors import ExportError
from .naming import unique_names
from .tensors import ElidedTensor, SparseTensor
from .types import MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type

_PROTOBUF_LIMIT = 2**31 - 1


def to_onnx(model: Model) -> onnx.ModelProto:
    """Build a ModelProto (not checked; `save_model` checks)."""
    names = unique_names(model.graph)
    with bulk_build():
        graph = _Exporter(names).graph(model.graph)
    proto = helper.make_model(
        graph,
        opset_imports=_opsets(model.opset_imports),
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
    )
    proto.ir_version = model.ir_version  # kept as is: ORT treats initializer-inputs differently before IR v4
    helper.set_model_props(proto, model.metadata)
    return proto


def to_onnx_with_outputs(model: Model, values: Sequence[Value]) -> onnx.ModelProto:
    """The model with `values` (of its main graph) appended to the graph outputs."""
    names = unique_names(model.graph)
    proto = to_onnx(model)
    present = {o.name for o in proto.graph.output}
    exporter = _Exporter(names)
    proto.graph.output.extend(exporter.value_info(v) for v in values if names[v] not in present)
    return proto


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

    `external_data` None means: only when the tensors pass the 2 GB protobuf limit. The
    data file is `<model file name>.data` beside the model.
    """
    path = Path(path)
    proto = to_onnx(model)
    if external_data is None:
        external_data = _tensor_bytes(proto) > _PROTOBUF_LIMIT - (64 << 20)
    if not external_data:
        _check(proto, None)
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        try:
            onnx.save_model(
                proto,
                str(staged),
                save_as_external_data=external_data,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        except (ValueError, OSError) as err:
            raise ExportError(f"{path}: cannot write the model: {err}") from None
        if external_data:
            _check(None, staged)
            os.replace(Path(staging) / data_name, path.parent / data_name)
        os.replace(staged, path)


def _check(proto: onnx.ModelProto | None, path: Path | None) -> None:
    try:
        onnx.checker.check_model(str(path) if path is not None else proto)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise ExportError(f"the exported model does not pass onnx.checker: {first}") from None


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    return sum(
        len(t.raw_data) for t in onnx.external_data_helper._get_all_tensors(proto)
    )


class _Exporter:
    def __init__(self, names: dict[Value, str]) -> None:
        self.names = names

    def name(self, value: Value | None) -> str:
        return "" if value is None else self.names[value]

    def graph(self, graph: Graph) -> onnx.GraphProto:
        boundary = {*graph.inputs, *graph.outputs, *graph.constants}
        value_info = [
            self.value_info(v)
            for node in graph.nodes
            for v in node.outputs
            if v.type is not None and v not in boundary
        ]
        return helper.make_graph(
            [self.node(node) for node in graph.nodes],
            graph.name,
            [self.value_info(v) for v in graph.inputs],
            [self.value_info(v) for v in graph.outputs],
            initializer=[self.tensor(v.const, self.names[v]) for v in graph.constants],
            doc_string=graph.doc_string or None,
            value_info=value_info,
        )

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

    def tensor(self, data: np.ndarray | ElidedTensor, name: str) -> onnx.TensorProto:
        if isinstance(data, ElidedTensor):
            raise ExportError(
                f"constant {name or data.key!r} was elided from the text dump ({data.key!r}); "
                "give the weights file that was written with it"
            )
        return numpy_helper.from_array(data, name)

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
