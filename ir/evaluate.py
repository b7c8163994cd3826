"""Evaluate IR nodes in ONNX Runtime, so folded constants hold exactly what the runtime computes.

One session per call however many nodes it runs: creating a session costs far more
than running the small constant subgraphs folding sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .core import Node, Value
from .errors import EvaluationError
from .onnx_export import nodes_to_onnx

_MIN_IR_VERSION = 4  # initializers that are not graph inputs


def evaluate(
    nodes: Sequence[Node], outputs: Sequence[Value], opset_imports: dict[str, int], ir_version: int
) -> list[np.ndarray]:
    """Run `nodes` (in order, reading only constants); the arrays of `outputs`, in order.

    Raises EvaluationError when ONNX Runtime rejects or fails on them, or an output is
    not a tensor.
    """
    import onnxruntime as ort  # 0.1 s to import; only evaluation needs it

    proto = nodes_to_onnx(nodes, outputs, opset_imports, max(ir_version, _MIN_IR_VERSION))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # failures come back as EvaluationError, not log lines
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        arrays = session.run(None, {})
    except Exception as err:  # ORT's pybind errors share no narrower base
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise EvaluationError(f"ONNX Runtime cannot evaluate {len(nodes)} node(s): {lines[0]}") from None
    for value, array in zip(outputs, arrays):
        if not isinstance(array, np.ndarray):
            raise EvaluationError(f"%{value.name} evaluates to a {type(array).__name__}, not a tensor")
    return arrays
