"""qcompiler's graph IR: values, nodes, graphs; ONNX import/export; the text form."""

from .attributes import Attr, AttrKind
from .core import Graph, Model, Node, NodeList, Use, Value
from .dtypes import DType
from .errors import ExportError, IRError, ModelLoadError, ParseError, VerifyError
from .onnx_export import save_model, to_onnx
from .onnx_import import load_model
from .quant import QuantParams
from .tensors import ElidedTensor, SparseTensor
from .types import Dim, MapType, OptionalType, SequenceType, Shape, SparseTensorType, TensorType, Type

__all__ = [
    "Attr", "AttrKind", "Dim", "DType", "ElidedTensor", "ExportError", "Graph", "IRError",
    "MapType", "Model", "ModelLoadError", "Node", "NodeList", "OptionalType", "ParseError",
    "QuantParams", "SequenceType", "Shape", "SparseTensor", "SparseTensorType", "TensorType",
    "Type", "Use", "Value", "VerifyError", "load_model", "save_model", "to_onnx",
]

from .parser import parse_file, parse_model  # noqa: E402
from .printer import print_model  # noqa: E402
from .weights import load_weights, save_weights  # noqa: E402

__all__ += ["load_weights", "parse_file", "parse_model", "print_model", "save_weights"]
