"""How far a quantized model's outputs stray from its float original, and how fast each runs.

1. Both models run in ONNX Runtime with ir/evaluate.py's sessions (default graph
   optimizations, as a deployment gets them; lean when large, so two sessions weigh about
   the two models) on the same feeds, batch by batch. Outputs pair up by name when both
   models have the same output names, else by position, and take the float model's names;
   a model is anything `open_session` takes.
2. Metrics per output are ir/evaluate.py's running sums (SQNR, cosine, max error,
   top-1 agreement, NaN/Inf counts) and, given the outputs' measures, the task figure of
   qcompiler/acceptance.py, so memory holds one batch whatever the amount of data;
   `summary` puts a non-finite count first.
3. Latency is ir/evaluate.py's `time_runs` on the two models, opened with prepacking as
   a deployment runs them; its budget keeps it cheap on large models, since it runs after
   every compile. `time_sessions` does this on sessions already open, so a benchmark
   (qcompiler/bench.py) times several batch sizes on one pair of sessions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qcompiler import ir
from qcompiler.acceptance import Measure, TaskSums, task_text
from qcompiler.ir.evaluate import (
    ErrorSums, Latency, ModelSource, OutputMetrics, open_session, rows_of, run, time_runs,
)

if TYPE_CHECKING:
    import onnxruntime

    from qcompiler.passes.infra.progress import Progress


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


def compare_models(float_model: ModelSource, quant_model: ModelSource, data: Iterable[Mapping[str, np.ndarray]], *,
                   threads: int = 0, progress: Progress | None = None,
                   measures: Mapping[str, Measure] | None = None) -> list[OutputMetrics]:
    """Metrics of each output of `quant_model` against `float_model` over every feed of `data`.

    `progress` (anything with advance() and close()) advances once per batch; `measures`
    (by the float model's output names) adds each output's task figure.
    """
    reference = open_session(float_model, threads=threads, failure="ONNX Runtime cannot load the float model")
    quantized = open_session(quant_model, threads=threads, failure="ONNX Runtime cannot load the quantized model")
    names = [output.name for output in reference.get_outputs()]
    quant_names = [output.name for output in quantized.get_outputs()]
    if len(quant_names) != len(names):
        raise ir.EvaluationError(f"the float model has {len(names)} output(s), the quantized model "
                                 f"{len(quant_names)}; they cannot be compared")
    paired = names if sorted(quant_names) == sorted(names) else None  # by name, else by position
    sums = [ErrorSums(name) for name in names]
    tasks = [TaskSums(name, measures[name]) if measures and name in measures else None for name in names]
    batches = 0
    try:
        for batch, feeds in enumerate(data):
            expected = run(reference, feeds, failure=f"ONNX Runtime failed on the float model, batch {batch}")
            actual = run(quantized, feeds, outputs=paired,
                         failure=f"ONNX Runtime failed on the quantized model, batch {batch}")
            for output, task, ref, quant in zip(sums, tasks, expected, actual):
                output.add(ref, quant)
                if task is not None:
                    task.add(ref, quant)
            batches += 1
            if progress is not None:
                progress.advance()
    finally:
        if progress is not None:
            progress.close()
    if batches == 0:
        raise ValueError("no data to compare the models on")
    return [output.metrics() if task is None else
            dataclasses.replace(output.metrics(), measure=task.measure.describe(), measure_value=task.value())
            for output, task in zip(sums, tasks)]


def measure_latency(float_model: ModelSource, quant_model: ModelSource, feeds: Mapping[str, np.ndarray], *,
                    threads: int = 1, warmup: int = 2, repeat: int = 50, budget_s: float = 1.0) -> LatencyPair:
    """Median and p90 latency of both models on one feed (rule 3); at least one timed run each.

    `feeds` is one batch, e.g. the first of the validation data; its axis 0 is the batch
    the verdict names.
    """
    sessions = (open_session(float_model, threads=threads, lean=False,
                             failure="ONNX Runtime cannot load the float model"),
                open_session(quant_model, threads=threads, lean=False,
                             failure="ONNX Runtime cannot load the quantized model"))
    return time_sessions(sessions, feeds, threads=threads, warmup=warmup, repeat=repeat, budget_s=budget_s)


def time_sessions(sessions: tuple[onnxruntime.InferenceSession, onnxruntime.InferenceSession],
                  feeds: Mapping[str, np.ndarray], *, threads: int, warmup: int = 2, repeat: int = 50,
                  budget_s: float = 1.0) -> LatencyPair:
    """measure_latency on open (float, quantized) sessions; `threads` is what they were opened with."""
    float_latency, quant_latency = time_runs(sessions, feeds, labels=("the float model", "the quantized model"),
                                             warmup=warmup, repeat=repeat, budget_s=budget_s)
    return LatencyPair(float_latency, quant_latency, rows_of(feeds), threads)


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
        task = task_text(m)
        if task is not None:
            parts.append(task)
        warning = f"{m.nonfinite} NaN/Inf value(s) in the quantized output; " if m.nonfinite else ""
        lines.append(f"{m.name}: {warning}{', '.join(parts)} ({m.samples} samples)")
    return "\n".join(lines)


def ms_text(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def threads_text(count: int) -> str:
    """A LatencyPair's thread count in words (0: ORT's default intra-op pool)."""
    return "ORT's default threads" if count == 0 else f"{count} thread{'s' * (count != 1)}"
