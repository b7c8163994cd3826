"""Run models in ONNX Runtime: the one place sessions open, inner values are tapped, feeds
stream, errors are summed and runs are timed.

It lives in ir because ir itself runs models (constant folding here, the opset conversion
check in opset.py) and may import nothing above it; passes, the driver, tools and tests
all evaluate through it.

1. Sessions (`open_session`): the CPU provider; `threads` intra-op threads (0: ORT's
   default, all cores); ORT's default graph optimizations, as a deployment gets them,
   unless `optimize=False` (constant folding: exactly what the ops compute); ORT logs only
   fatal lines, since every failure comes back as an exception that says what failed. A
   model is an `ir.Model` (exported through a ModelFile, with external data when large),
   a ModelProto (its bytes, or past the protobuf limit a file with external data), bytes
   or a path.
2. Large models (constants past LARGE_MODEL_BYTES; a path counts the data files beside
   it) open lean: no prepacked copy of every MatMul/Gemm weight, a second copy of the
   model, where unpacked ORT computes from the file mapping it already has. Timing opens
   with `lean=False`, since a deployment prepacks.
3. Taps (`ValueTap`): a session over the whole model that also returns chosen inner values,
   added as outputs of the exported copy. `tap_groups` splits values whose activations per
   batch pass a memory budget; `main_values` lists the values the same way in any copy.
4. Feeds: `rows_of` is a feed's batch size (axis 0 of its first array); `first_rows` yields
   whole feeds until at least N rows are read; `run` gives a session only the inputs it takes.
5. Errors (`ErrorSums`): float64 sums kept per tensor (sum ref^2, sum (ref-q)^2, sum q^2,
   sum ref*q, max |ref-q|, rows whose argmax agrees), so memory holds one batch whatever
   the amount of data, and the result equals the one-shot value over all batches joined:
   - SQNR = 10 log10(sum ref^2 / sum (ref-q)^2) dB: +inf when the tensors are identical,
     -inf when the reference is all zeros and the quantized tensor is not;
   - cosine of the flattened tensors: 1 when both are all zeros, 0 when only one is;
   - top-1 agreement only for classifier-like tensors (float, rank 2 [batch, classes],
     classes >= 2): the share of rows whose argmax agrees. None for any other.
   Positions where either tensor is NaN or Inf are left out of every sum, so one bad value
   does not hide the error of the rest; `nonfinite` counts them in the quantized tensor.
   SQNR and cosine are NaN when no position is left to compare.
6. Latency (`time_runs`): the sessions run interleaved, the first to run rotating each
   turn, so machine noise (other processes, frequency scaling) hits all alike. Each gets
   `warmup` untimed runs, then up to `repeat` timed ones, stopping once any has spent
   `budget_s` seconds; at least one timed run each.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import onnx

from .core import Model, Node, Value
from .errors import EvaluationError
from .naming import unique_names
from . import onnx_export
from .onnx_export import ModelFile, nodes_to_onnx
from .types import TensorType

if TYPE_CHECKING:
    import onnxruntime

ModelSource = Union[Model, onnx.ModelProto, bytes, str, os.PathLike]

_PROTOBUF_LIMIT = 2**31 - 1

_MIN_IR_VERSION = 4  # initializers that are not graph inputs


def open_session(model: ModelSource, *, threads: int = 0, optimize: bool = True, lean: bool = True,
                 outputs: Sequence[Value] = (), save_optimized: str | os.PathLike | None = None,
                 config: Mapping[str, str] | None = None, failure: str = "ONNX Runtime cannot load the model",
                 error: type[Exception] = EvaluationError) -> onnxruntime.InferenceSession:
    """A CPU session over `model` with the options of rule 1, lean when large (rule 2).

    `outputs` (values of an `ir.Model`) become extra outputs; `save_optimized` writes the
    graph ORT runs there, its large initializers to a `.data` file beside it; `config`
    adds session config entries. Raises `error` with `failure` and ORT's first line when
    ORT rejects the model.
    """
    import onnxruntime as ort  # 0.1 s to import; only evaluation needs it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_optimized is not None:
        options.optimized_model_filepath = os.fspath(save_optimized)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         Path(save_optimized).name + ".data")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    with ExitStack() as stack:
        if isinstance(model, Model):
            exported = stack.enter_context(ModelFile(model, outputs=outputs))
            source, large = str(exported.path), exported.large
        elif isinstance(model, onnx.ModelProto):
            source, large = _proto_source(model, stack), False  # in memory: its weights are copied anyway
        elif isinstance(model, bytes):
            source, large = model, False
        else:
            source, large = os.fspath(model), _is_large(model)
        if lean and large:
            options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT's pybind errors share no narrower base
            raise error(f"{failure}: {_first_line(err)}") from None


def run(session: onnxruntime.InferenceSession, feeds: Mapping[str, np.ndarray], *,
        outputs: Sequence[str] | None = None, failure: str = "ONNX Runtime failed on the model",
        error: type[Exception] = EvaluationError) -> list[np.ndarray]:
    """The arrays of `outputs` (all when None) for the inputs of `feeds` that `session` takes;
    a missing input is ORT's error to report, raised as `error` with `failure`."""
    inputs = {arg.name: feeds[arg.name] for arg in session.get_inputs() if arg.name in feeds}
    try:
        return session.run(outputs, inputs)
    except Exception as err:  # ORT's pybind errors share no narrower base
        raise error(f"{failure}: {_first_line(err)}") from None


def evaluate(
    nodes: Sequence[Node], outputs: Sequence[Value], opset_imports: dict[str, int], ir_version: int
) -> list[np.ndarray]:
    """Run `nodes` (in order, reading only constants), unoptimized so folded constants hold exactly
    what the runtime computes; the arrays of `outputs`, in order.

    One session per call however many nodes it runs: creating a session costs far more
    than running the small constant subgraphs folding sees. Raises EvaluationError when
    ONNX Runtime rejects or fails on them, or an output is not a tensor.
    """
    proto = nodes_to_onnx(nodes, outputs, opset_imports, max(ir_version, _MIN_IR_VERSION))
    failure = f"ONNX Runtime cannot evaluate {len(nodes)} node(s)"
    arrays = run(open_session(proto, threads=1, optimize=False, failure=failure), {}, failure=failure)
    for value, array in zip(outputs, arrays):
        if not isinstance(array, np.ndarray):
            raise EvaluationError(f"%{value.name} evaluates to a {type(array).__name__}, not a tensor")
    return arrays


class ValueTap:
    """A session over the whole model that also returns chosen inner values (rule 3)."""

    def __init__(self, model: Model, values: Sequence[Value], *, threads: int = 0) -> None:
        self.values = list(values)
        self._session = open_session(model, threads=threads, outputs=self.values,
                                     failure="ONNX Runtime cannot load the model to observe it")
        names = unique_names(model.graph)  # the names the export gave them
        self._names = [names[v] for v in self.values]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The arrays of the tapped values for one batch of inputs, in the order given."""
        return run(self._session, feeds, outputs=self._names, failure="ONNX Runtime failed on a calibration batch")


def main_values(model: Model) -> list[Value]:
    """Graph inputs, then node outputs in graph order: the same list in any copy of the model."""
    graph = model.graph
    return [*graph.inputs, *(v for node in graph.nodes for v in node.outputs)]


def tap_groups(model: Model, values: list[Value], data: Iterable[Mapping[str, np.ndarray]],
               budget: int) -> list[list[int]]:
    """Split the values so each group's activations per batch fit `budget` bytes (greedy, in order).

    Sizes come from static shapes; symbolic dims take their size from the first batch's
    inputs where an input has a dim of that name (read only when some value needs it);
    dims nothing tells count as 1.
    """
    symbolic = any(isinstance(d, str) for v in values for d in (v.shape or ()))
    dims = _dims_from_first_batch(model, data) if symbolic else {}
    groups: list[list[int]] = [[]]
    used = 0
    for index, value in enumerate(values):
        size = _value_bytes(value, dims)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += size
    return groups


def outputs_over(tap: ValueTap, feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Each tapped value, one array per feed, keyed by its name. Kept per feed: samples of
    different shapes (text lines, sentences) have outputs that don't join."""
    batches = [tap.run(feed) for feed in feeds]
    return {value.name: [np.atleast_1d(b[i]) for b in batches] for i, value in enumerate(tap.values)}


def joined(outputs: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Each output's feeds joined on axis 0 where their shapes allow, else the list of per-feed
    arrays, in data order: what a metric function is given."""
    return {name: np.concatenate(arrays) if len({a.shape[1:] for a in arrays}) == 1 else list(arrays)
            for name, arrays in outputs.items()}


def rows_of(feed: Mapping[str, np.ndarray]) -> int:
    """The batch size of a feed: axis 0 of its first array (1 for a scalar or an empty feed)."""
    first = next(iter(feed.values()), None)
    return int(np.shape(first)[0]) if first is not None and np.ndim(first) else 1


def first_rows(data: Iterable[Mapping[str, np.ndarray]], rows: int) -> Iterator[Mapping[str, np.ndarray]]:
    """Whole feeds of `data` until at least `rows` rows have been read; no feed past them is read."""
    seen = 0
    for feed in data:
        if seen >= rows:
            return
        yield feed
        seen += rows_of(feed)


@dataclass(frozen=True)
class OutputMetrics:
    """The error of one quantized output against the float one, over `samples` rows (axis 0)."""

    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    top1_agreement: float | None
    samples: int
    nonfinite: int
    measure: str | None = None  # the task measure judged on this output (qcompiler/acceptance.py), if any
    measure_value: float | None = None


class ErrorSums:
    """The running sums of one tensor, batch by batch (rule 5)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.signal = self.noise = self.quant_energy = self.dot = self.max_error = 0.0
        self.compared = self.samples = self.nonfinite = self.agreeing = 0
        self.classifier = True

    def add(self, ref: np.ndarray, quant: np.ndarray) -> None:
        if ref.shape != quant.shape:
            raise EvaluationError(f"{self.name!r} has shape {ref.shape} in the float model but "
                                  f"{quant.shape} in the quantized model")
        self.samples += ref.shape[0] if ref.ndim else 1
        self.classifier = self.classifier and ref.ndim == 2 and ref.shape[1] >= 2 and ref.dtype.kind == "f"
        if self.classifier:
            self.agreeing += int(np.count_nonzero(ref.argmax(axis=1) == quant.argmax(axis=1)))
        r = np.asarray(ref, dtype=np.float64).ravel()
        q = np.asarray(quant, dtype=np.float64).ravel()
        finite_q = np.isfinite(q)
        self.nonfinite += int(q.size - np.count_nonzero(finite_q))
        finite = finite_q & np.isfinite(r)
        if not finite.all():
            r, q = r[finite], q[finite]
        error = r - q
        self.signal += float(r @ r)
        self.noise += float(error @ error)
        self.quant_energy += float(q @ q)
        self.dot += float(r @ q)
        self.compared += error.size
        if error.size:
            self.max_error = max(self.max_error, float(np.abs(error).max()))

    def metrics(self) -> OutputMetrics:
        top1 = self.agreeing / self.samples if self.classifier and self.samples else None
        return OutputMetrics(self.name, self._sqnr(), self._cosine(), self.max_error, top1, self.samples,
                             self.nonfinite)

    def _sqnr(self) -> float:
        if not self.compared:
            return math.nan
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)

    def _cosine(self) -> float:
        if not self.compared:
            return math.nan
        if self.signal == 0 or self.quant_energy == 0:
            return 1.0 if self.signal == self.quant_energy else 0.0
        return self.dot / math.sqrt(self.signal * self.quant_energy)


def sqnr_db(reference: np.ndarray | Sequence[np.ndarray], actual: np.ndarray | Sequence[np.ndarray]) -> float:
    """Rule 5's SQNR of arrays, or of lists of arrays paired in order (summed over all of them)."""
    sums = ErrorSums("output")
    pairs = zip(reference, actual) if isinstance(reference, list | tuple) else [(reference, actual)]
    for want, got in pairs:
        sums.add(np.asarray(want), np.asarray(got))
    return sums.metrics().sqnr_db


@dataclass(frozen=True)
class Latency:
    """Wall-clock milliseconds of one model's timed runs."""

    median_ms: float
    p90_ms: float
    runs: int


def time_runs(sessions: Sequence[onnxruntime.InferenceSession], feeds: Mapping[str, np.ndarray], *,
              labels: Sequence[str] | None = None, warmup: int = 2, repeat: int = 50,
              budget_s: float = 1.0) -> list[Latency]:
    """The latency of each session on one feed (rule 6), in order; `labels` name them in errors."""
    labels = labels or [f"model {k + 1}" for k in range(len(sessions))]
    calls = [_timed_call(session, feeds, f"ONNX Runtime failed on {label}") for session, label in zip(sessions, labels)]
    spent = [0.0] * len(calls)
    for _ in range(warmup):
        for k, call in enumerate(calls):
            spent[k] += call()
        if max(spent) >= budget_s:
            break
    times: list[list[float]] = [[] for _ in calls]
    for turn in range(max(repeat, 1)):
        for i in range(len(calls)):
            k = (turn + i) % len(calls)
            times[k].append(calls[k]())
        if max(sum(t) for t in times) >= budget_s:
            break
    return [_latency(t) for t in times]


def _timed_call(session: onnxruntime.InferenceSession, feeds: Mapping[str, np.ndarray], failure: str):
    inputs = {arg.name: feeds[arg.name] for arg in session.get_inputs() if arg.name in feeds}

    def call() -> float:
        start = time.perf_counter()
        try:
            session.run(None, inputs)
        except Exception as err:  # ORT's pybind errors share no narrower base
            raise EvaluationError(f"{failure}: {_first_line(err)}") from None
        return time.perf_counter() - start

    return call


def _latency(seconds: list[float]) -> Latency:
    ms = np.array(seconds) * 1e3
    return Latency(float(np.median(ms)), float(np.percentile(ms, 90)), len(ms))


def _proto_source(proto: onnx.ModelProto, stack: ExitStack) -> bytes | str:
    """What ORT loads `proto` from: its bytes, or past the protobuf limit a file with external
    data in a folder `stack` removes (a proto that large cannot even report its size)."""
    tensor_bytes = sum(len(t.raw_data) for t in onnx.external_data_helper._get_all_tensors(proto))
    if tensor_bytes < _PROTOBUF_LIMIT - (64 << 20):
        return proto.SerializeToString()
    path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="model.onnx.data")
    return str(path)


def _is_large(path: str | os.PathLike) -> bool:
    """Whether a model file with the data files beside it passes LARGE_MODEL_BYTES, read where
    ModelFile reads it, so the two agree."""
    if isinstance(path, ModelFile):
        return path.large
    path = Path(os.fspath(path))
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file()) > onnx_export.LARGE_MODEL_BYTES


def _dims_from_first_batch(model: Model, data: Iterable[Mapping[str, np.ndarray]]) -> dict[str, int]:
    """Sizes of symbolic input dims in the first feed; none when there is no feed (the data's
    reader reports that it is empty)."""
    first = next(iter(data), None)
    dims: dict[str, int] = {}
    for value in model.graph.inputs if first is not None else ():
        array = first.get(value.name)
        if array is None or value.shape is None:
            continue
        for dim, size in zip(value.shape, getattr(array, "shape", ())):
            if isinstance(dim, str):
                dims.setdefault(dim, int(size))
    return dims


def _value_bytes(value: Value, dims: dict[str, int]) -> int:
    if not isinstance(value.type, TensorType) or value.shape is None:
        return 0
    count = 1
    for dim in value.shape:
        count *= dim if isinstance(dim, int) else dims.get(dim, 1) if isinstance(dim, str) else 1
    return count * max(value.type.dtype.bitwidth // 8, 1)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
