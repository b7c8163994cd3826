"""How far a quantized model's outputs stray from its float original, and how fast each runs.

1. Both models run in ONNX Runtime (CPUExecutionProvider, default graph optimizations,
   as a deployment gets them) on the same feeds, batch by batch. Outputs pair up by name
   when both models have the same output names, else by position, and take the float
   model's names; a model is an `ir.Model`, serialized ONNX bytes or a path (an
   `ModelFile` is one). An `ir.Model` reaches ONNX Runtime through a ModelFile, with
   external data when large. Comparison opens lean sessions (no prepacked weight copy,
   ir/evaluate.py) for large models, so two sessions weigh about the two models.
2. Metrics per output are passes/metrics.py's running sums (SQNR, cosine, max error,
   top-1 agreement, NaN/Inf counts), so memory holds one batch whatever the amount of
   data; `summary` puts a non-finite count first.
3. Latency runs the two models interleaved, alternating which goes first, so machine
   noise (other processes, frequency scaling) hits both alike. Each model gets `warmup`
   untimed runs, then up to `repeat` timed ones, stopping once either model has spent
   `budget_s` seconds: it runs after every compile, so it stays cheap on large models.
   `time_sessions` does this on sessions already open, so a benchmark (qcompiler/bench.py)
   times several batch sizes on one pair of sessions.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import onnx

from qcompiler import ir
from qcompiler.ir.evaluate import lean_options, session_source
from qcompiler.ir.onnx_export import LARGE_MODEL_BYTES, ModelFile, constant_bytes
from qcompiler.passes.metrics import ErrorSums, OutputMetrics
from qcompiler.passes.sensitivity import rows_of

if TYPE_CHECKING:
    import onnxruntime

    from qcompiler.passes.progress import Progress

ModelSource = Union[ir.Model, onnx.ModelProto, bytes, str, os.PathLike]


@dataclass(frozen=True)
class Latency:
    """Wall-clock milliseconds of one model's timed runs."""

    median_ms: float
    p90_ms: float
    runs: int


@dataclass(frozen=True)
class LatencyPair:
    """Latency of both models on one feed of `batch` rows with `threads` intra-op threads (0: ORT's default)."""

    float_model: Latency
    quant_model: Latency
    batch: int
    threads: int

    @property
    def ratio(self) -> float:
        """Quantized median over float median: above 1, the quantized model is slower."""
        return self.quant_model.median_ms / self.float_model.median_ms


def open_session(model: ModelSource, *, threads: int = 0, options: onnxruntime.SessionOptions | None = None,
                 label: str = "the", lean: bool = False) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session over `model` with `threads` intra-op threads (0: all cores).

    `options` lets a caller ask for more (an optimized-model file); warnings stay quiet.
    `lean` drops weight prepacking when the model is large (rule 1).
    Raises EvaluationError, naming `label`, when ONNX Runtime rejects the model.
    """
    import onnxruntime as ort  # 0.1 s to import; only validation needs it

    options = options or ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if lean and _is_large(model):
        lean_options(options)
    with tempfile.TemporaryDirectory() as scratch:
        if isinstance(model, ir.Model):
            exported = ModelFile(model)
            source = str(exported.path)
        elif isinstance(model, onnx.ModelProto):
            source = session_source(model, Path(scratch))
        else:
            source = model if isinstance(model, bytes) else os.fspath(model)
        try:
            return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT's pybind errors share no narrower base
            raise ir.EvaluationError(f"ONNX Runtime cannot load {label} model: {_first_line(err)}") from None


def compare_models(float_model: ModelSource, quant_model: ModelSource, data: Iterable[Mapping[str, np.ndarray]], *,
                   threads: int = 0, progress: Progress | None = None) -> list[OutputMetrics]:
    """Metrics of each output of `quant_model` against `float_model` over every feed of `data`.

    `progress` (anything with advance() and close()) advances once per batch.
    """
    reference = open_session(float_model, threads=threads, label="the float", lean=True)
    quantized = open_session(quant_model, threads=threads, label="the quantized", lean=True)
    names = [output.name for output in reference.get_outputs()]
    quant_names = [output.name for output in quantized.get_outputs()]
    if len(quant_names) != len(names):
        raise ir.EvaluationError(f"the float model has {len(names)} output(s), the quantized model "
                                 f"{len(quant_names)}; they cannot be compared")
    paired = names if sorted(quant_names) == sorted(names) else None  # by name, else by position
    sums = [ErrorSums(name) for name in names]
    batches = 0
    try:
        for batch, feeds in enumerate(data):
            expected = _run(reference, _inputs(reference, feeds), f"the float model, batch {batch}")
            actual = _run(quantized, _inputs(quantized, feeds), f"the quantized model, batch {batch}", paired)
            for output, ref, quant in zip(sums, expected, actual):
                output.add(ref, quant)
            batches += 1
            if progress is not None:
                progress.advance()
    finally:
        if progress is not None:
            progress.close()
    if batches == 0:
        raise ValueError("no data to compare the models on")
    return [output.metrics() for output in sums]


def measure_latency(float_model: ModelSource, quant_model: ModelSource, feeds: Mapping[str, np.ndarray], *,
                    threads: int = 1, warmup: int = 2, repeat: int = 50, budget_s: float = 1.0) -> LatencyPair:
    """Median and p90 latency of both models on one feed (rule 4); at least one timed run each.

    `feeds` is one batch, e.g. the first of the validation data; its axis 0 is the batch
    the verdict names.
    """
    sessions = (open_session(float_model, threads=threads, label="the float"),
                open_session(quant_model, threads=threads, label="the quantized"))
    return time_sessions(sessions, feeds, threads=threads, warmup=warmup, repeat=repeat, budget_s=budget_s)


def time_sessions(sessions: tuple[onnxruntime.InferenceSession, onnxruntime.InferenceSession],
                  feeds: Mapping[str, np.ndarray], *, threads: int, warmup: int = 2, repeat: int = 50,
                  budget_s: float = 1.0) -> LatencyPair:
    """measure_latency on open (float, quantized) sessions; `threads` is what they were opened with."""
    labels = ["the float model", "the quantized model"]
    inputs = [_inputs(session, feeds) for session in sessions]
    spent, times = [0.0, 0.0], [[], []]
    for _ in range(warmup):
        for k, session in enumerate(sessions):
            start = time.perf_counter()
            _run(session, inputs[k], labels[k])
            spent[k] += time.perf_counter() - start
        if max(spent) >= budget_s:
            break
    for turn in range(max(repeat, 1)):
        for k in (0, 1) if turn % 2 == 0 else (1, 0):
            start = time.perf_counter()
            _run(sessions[k], inputs[k], labels[k])
            times[k].append(time.perf_counter() - start)
        if max(sum(t) for t in times) >= budget_s:
            break
    return LatencyPair(_latency(times[0]), _latency(times[1]), rows_of(feeds), threads)


def latency_verdict(pair: LatencyPair, quantized: str = "the quantized model") -> str:
    """One line: which side is faster and by how much, with the medians and the setting they hold for.

    `quantized` names the quantized side: its mode ("int8", "fp16") when known.
    """
    where = (f"({ms_text(pair.quant_model.median_ms)} vs {ms_text(pair.float_model.median_ms)} "
             f"at batch {pair.batch}, {threads_text(pair.threads)})")
    ratio = pair.ratio
    factor = max(ratio, 1 / ratio)
    if round(factor, 1) <= 1.0:
        return f"{quantized} runs as fast as float here {where}"
    return f"{quantized} is {factor:.1f}x {'slower' if ratio > 1 else 'faster'} than float here {where}"


def summary(metrics: Iterable[OutputMetrics]) -> str:
    """A line per output: SQNR, cosine, max error, top-1 agreement; non-finite values first, as a warning."""
    lines = []
    for m in metrics:
        parts = [f"SQNR {m.sqnr_db:.1f} dB", f"cosine {m.cosine:.5f}", f"max |error| {m.max_abs_error:.4g}"]
        if m.top1_agreement is not None:
            parts.append(f"top-1 agreement {100 * m.top1_agreement:.1f}%")
        warning = f"{m.nonfinite} NaN/Inf value(s) in the quantized output; " if m.nonfinite else ""
        lines.append(f"{m.name}: {warning}{', '.join(parts)} ({m.samples} samples)")
    return "\n".join(lines)


def _is_large(model: ModelSource) -> bool:
    """Whether `model`'s weights pass LARGE_MODEL_BYTES (a path counts its data files beside it)."""
    if isinstance(model, ModelFile):
        return model.large
    if isinstance(model, ir.Model):
        return constant_bytes(model) > LARGE_MODEL_BYTES
    if isinstance(model, onnx.ModelProto | bytes):
        return False  # in memory, so under the protobuf limit and its weights are copied anyway
    path = Path(os.fspath(model))
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file()) > LARGE_MODEL_BYTES


def _inputs(session: onnxruntime.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of `feeds` that `session` takes; a missing one is ONNX Runtime's error to report."""
    return {arg.name: feeds[arg.name] for arg in session.get_inputs() if arg.name in feeds}


def _run(session: onnxruntime.InferenceSession, inputs: dict[str, np.ndarray], where: str,
         outputs: list[str] | None = None) -> list[np.ndarray]:
    try:
        return session.run(outputs, inputs)
    except Exception as err:  # ORT's pybind errors share no narrower base
        raise ir.EvaluationError(f"ONNX Runtime failed on {where}: {_first_line(err)}") from None


def _latency(seconds: list[float]) -> Latency:
    ms = np.array(seconds) * 1e3
    return Latency(float(np.median(ms)), float(np.percentile(ms, 90)), len(ms))


def ms_text(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def threads_text(count: int) -> str:
    """A LatencyPair's thread count in words (0: ORT's default intra-op pool)."""
    return "ORT's default threads" if count == 0 else f"{count} thread{'s' * (count != 1)}"


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
