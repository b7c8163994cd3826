"""qcompiler's graph IR: values, nodes, graphs; ONNX import/export; the text form."""

from .attributes import Attr, AttrKind
from .clone import clone_model
from .core import Graph, Model, Node, NodeList, Use, Value
from .dtypes import DType
from .errors import EvaluationError, ExportError, IRError, ModelLoadError, ParseError, VerifyError
from .errorstats import ErrorStats
from .evaluate import evaluate
from .naming import NameAllocator
from .onnx_export import save_model, to_onnx
from .onnx_import import load_model
from .opset import convert_opset
from .quant import QuantParams
from .shapes import refresh_types
from .tensors import ElidedTensor, SparseTensor
from .types import Dim, MapType, OptionalType, SequenceType, Shape, SparseTensorType, TensorType, Type
from .verify import verify_graph, verify_model

__all__ = [
    "Attr", "AttrKind", "Dim", "DType", "ElidedTensor", "ErrorStats", "EvaluationError", "ExportError", "Graph",
    "IRError", "MapType", "Model", "ModelLoadError", "NameAllocator", "Node", "NodeList", "OptionalType", "ParseError",
    "QuantParams", "SequenceType", "Shape", "SparseTensor", "SparseTensorType", "TensorType",
    "Type", "Use", "Value", "VerifyError", "evaluate", "load_model", "refresh_types", "save_model",
    "clone_model", "to_onnx", "verify_graph", "verify_model",
]

from .parser import parse_file, parse_model  # noqa: E402
from .printer import print_model  # noqa: E402
from .weights import load_weights, save_weights  # noqa: E402

__all__ += ["load_weights", "parse_file", "parse_model", "print_model", "save_weights"]
