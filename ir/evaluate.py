"""Evaluate IR nodes in ONNX Runtime, so folded constants hold exactly what the runtime computes.

One session per call however many nodes it runs: creating a session costs far more
than running the small constant subgraphs folding sees.

Sessions over a whole model read it from a ModelFile (onnx_export): a path, with the
weights in external data once the model is large, as ONNX Runtime requires past 2 GB.
For a large model, `lean_options` turns weight prepacking off: ONNX Runtime would
otherwise keep a packed copy of every MatMul/Gemm weight, a second copy of the model,
where unpacked it computes from the file mapping it already has.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from .core import Model, Node, Value
from .errors import EvaluationError
from .naming import unique_names
from .onnx_export import ModelFile, nodes_to_onnx

_PROTOBUF_LIMIT = 2**31 - 1

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


class ValueTap:
    """An ONNX Runtime session over the whole model that also returns chosen inner values.

    Calibration runs the float model and reads activations that are not graph outputs;
    this adds them as outputs of an exported copy (a ModelFile, lean when large).
    """

    def __init__(self, model: Model, values: Sequence[Value], *, threads: int = 0) -> None:
        import onnxruntime as ort

        self.values = list(values)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        with ModelFile(model, outputs=self.values) as exported:
            if exported.large:
                lean_options(options)
            try:
                self._session = ort.InferenceSession(exported.path, options, providers=["CPUExecutionProvider"])
            except Exception as err:  # ORT's pybind errors share no narrower base
                lines = str(err).strip().splitlines() or [type(err).__name__]
                raise EvaluationError(f"ONNX Runtime cannot load the model to observe it: {lines[0]}") from None
        names = unique_names(model.graph)  # the names the export gave them
        self._names = [names[v] for v in self.values]
        self.input_names = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The arrays of the tapped values for one batch of inputs, in the order given."""
        try:
            return self._session.run(self._names, feeds)
        except Exception as err:
            lines = str(err).strip().splitlines() or [type(err).__name__]
            raise EvaluationError(f"ONNX Runtime failed on a calibration batch: {lines[0]}") from None


def lean_options(options) -> None:
    """Session options for a large model: no prepacked copy of the weights (module docstring)."""
    options.add_session_config_entry("session.disable_prepacking", "1")


def session_source(proto: onnx.ModelProto, scratch: Path) -> bytes | str:
    """What ONNX Runtime loads `proto` from: its bytes, or past the protobuf limit a file in
    `scratch` with external data (a proto that large cannot even report its size)."""
    tensor_bytes = sum(len(t.raw_data) for t in onnx.external_data_helper._get_all_tensors(proto))
    if tensor_bytes < _PROTOBUF_LIMIT - (64 << 20):
        return proto.SerializeToString()
    path = scratch / "model.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="model.onnx.data")
    return str(path)
