"""qcompiler's graph IR: values, nodes, graphs; ONNX import/export; the text form."""

import copyreg

import numpy as np

from .attributes import Attr, AttrKind
from .clone import clone_model
from .core import Graph, Model, Node, NodeList, Use, Value, infer_attr
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
    "clone_model", "infer_attr", "to_onnx", "verify_graph", "verify_model",
]

from .parser import parse_file, parse_model  # noqa: E402
from .printer import computation_digest, print_model  # noqa: E402
from .weights import load_weights, save_weights  # noqa: E402

__all__ += ["computation_digest", "load_weights", "parse_file", "parse_model", "print_model", "save_weights"]


def _pickle_model(model: Model):
    """Models pickle as their text form and weights (worker processes get models this way): pickle
    follows producer/use links depth first, so a chain of a thousand nodes would exhaust its
    recursion. What the text leaves out is analysis caches in `meta`, recomputed on demand.
    Registered here rather than as `Model.__reduce__`: the text form is built on the core."""
    weights: dict[str, np.ndarray] = {}
    return _model_from_text, (print_model(model, weights=weights), weights)


def _model_from_text(text: str, weights: dict[str, np.ndarray]) -> Model:
    return parse_model(text, weights=weights)


copyreg.pickle(Model, _pickle_model)
