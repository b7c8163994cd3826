"""Float against quantized in ONNX Runtime: size, latency and throughput per batch size and thread count.

1. The two models run side by side (validate.time_sessions: interleaved, so machine noise
   hits both alike) once per setting: every batch size in `batches` with every thread
   count in `threads` (0: ONNX Runtime's default intra-op pool, all cores). One pair of
   sessions per thread count serves every batch size. A setting stops once either model
   has run `budget_s` seconds, and a batch size whose run would take longer than that
   (the smaller batch's median scaled) is skipped with a note: compile runs this every
   time, so it stays cheap on large models.
2. The feed of batch N comes from one feed (compile: the first of the evaluation data),
   its rows taken in turn until there are N. A model whose inputs fix the batch dim runs
   only that batch; the other sizes are skipped with a note.
3. Throughput is rows per second at the median run (batch / median). Sizes are the bytes
   each model weighs as ONNX, external data included.
4. Verdicts name the quantized side by its kind (`quantized_kind`: int8, int4, fp16, read
   off the model), "the quantized model" when it mixes kinds; a warning lists the
   settings where it runs slower than float.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompiler import ir
from qcompiler.data import InputSpec
from qcompiler.ir.evaluate import Latency, ModelSource, open_session, rows_of
from qcompiler.report import megabytes
from qcompiler.validate import LatencyPair, latency_verdict, ms_text, threads_text, time_sessions

DEFAULT_BATCHES = (1, 8)
DEFAULT_THREADS = (1, 0)
_KINDS = {ir.DType.INT8: "int8", ir.DType.UINT8: "int8", ir.DType.INT4: "int4", ir.DType.UINT4: "int4",
          ir.DType.INT16: "int16", ir.DType.UINT16: "int16", ir.DType.FLOAT16: "fp16", ir.DType.BFLOAT16: "bf16",
          ir.DType.FLOAT8E4M3FN: "fp8", ir.DType.FLOAT8E5M2: "fp8"}
_BIT_PACKED_OPS = frozenset({"MatMulNBits", "GatherBlockQuantized"})


@dataclass
class Benchmark:
    """Both models' figures in every setting measured, and the settings skipped (`notes`)."""

    quantized: str  # what the verdicts call the quantized model
    size_bytes: dict[str, int]
    settings: list[LatencyPair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def verdicts(self) -> list[str]:
        return [latency_verdict(pair, self.quantized) for pair in self.settings]

    def warnings(self) -> list[str]:
        """One line naming the settings where the quantized model is slower, with advice; none when it never is."""
        slower = [p for p in self.settings if round(p.ratio, 1) > 1.0]  # what latency_verdict calls slower
        if not slower:
            return []
        where = "; ".join(f"{p.ratio:.1f}x at batch {p.batch}, {threads_text(p.threads)}" for p in slower)
        return [(f"{self.quantized} is slower than float here ({where}): keep the float model, "
                 "or quantize only the large layers")]

    def size_line(self) -> str:
        before, after = self.size_bytes["float"], self.size_bytes["quantized"]
        return (f"size: float {megabytes(before)}, {self.quantized} {megabytes(after)} "
                f"({after / max(before, 1):.0%} of float)")

    def lines(self) -> list[str]:
        """The table, one row per setting (speed-up: float median over quantized median), then the
        verdicts and notes."""
        quant = self.quantized if " " not in self.quantized else "quant"
        lines = [(f"{'batch':>5}  {'threads':<7}  {'float median':>12}  {'p90':>9}  {'rows/s':>9}  "
                  f"{quant + ' median':>12}  {'p90':>9}  {'rows/s':>9}  {'speed-up':>8}")]
        for p in self.settings:
            threads = "all" if p.threads == 0 else str(p.threads)
            lines.append(f"{p.batch:>5}  {threads:<7}  {_cells(p.float_model, p.batch)}  "
                         f"{_cells(p.quant_model, p.batch)}  {1 / p.ratio:>7.2f}x")
        return [*lines, *self.verdicts(), *(f"note: {note}" for note in self.notes)]

    def to_dict(self) -> dict[str, Any]:
        return {"quantized": self.quantized, "size_bytes": dict(self.size_bytes),
                "settings": [_setting_dict(p, verdict) for p, verdict in zip(self.settings, self.verdicts())],
                "notes": list(self.notes)}


def benchmark(float_model: ModelSource, quant_model: ModelSource, feeds: Mapping[str, np.ndarray],
              specs: Sequence[InputSpec], *, size_bytes: dict[str, int], quantized: str = "the quantized model",
              batches: Sequence[int] = DEFAULT_BATCHES, threads: Sequence[int] = DEFAULT_THREADS,
              budget_s: float = 0.5, repeat: int = 200) -> Benchmark:
    """Rules 1-3: every batch size in `batches` with every thread count in `threads`, from one feed."""
    if any(b < 1 for b in batches) or any(t < 0 for t in threads):
        raise ValueError(f"batch sizes must be at least 1 and thread counts at least 0, not {batches}, {threads}")
    result = Benchmark(quantized, dict(size_bytes))
    fed = _feeds_per_batch(feeds, specs, batches, result.notes)
    for count in dict.fromkeys(threads):
        sessions = (open_session(float_model, threads=count, lean=False,
                                 failure="ONNX Runtime cannot load the float model"),
                    open_session(quant_model, threads=count, lean=False,
                                 failure="ONNX Runtime cannot load the quantized model"))
        measured: LatencyPair | None = None
        for feed in fed:
            batch = rows_of(feed)
            expected_ms = _expected_ms(measured, batch)
            if expected_ms > budget_s * 1e3:
                result.notes.append(f"batch {batch} with {threads_text(count)} skipped: a run would take about "
                                    f"{ms_text(expected_ms)}, beyond the {budget_s:g} s budget per setting")
                continue
            measured = time_sessions(sessions, feed, threads=count, repeat=repeat, budget_s=budget_s)
            result.settings.append(measured)
    return result


def batch_feed(feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """`feeds` with `batch` rows: its rows in turn, repeated as often as needed (rule 2)."""
    return {name: np.take(array, np.arange(batch) % len(array), axis=0) for name, array in feeds.items()}


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    """The batch dim the model's inputs fix, if any does."""
    fixed = [spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int)]
    return fixed[0] if fixed else None


def random_feeds(specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]] | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A feed for timing when no data is given: standard normal floats, zeros for integers and booleans
    (valid indices for any Gather); a dim that is not a number is 1 unless `shapes` gives the input's shape."""
    rng = np.random.default_rng(seed)
    shapes = shapes or {}
    unknown = sorted(set(shapes) - {spec.name for spec in specs})
    if unknown:
        raise ValueError(f"--shape names no input of the model: {', '.join(unknown)} "
                         f"(inputs: {', '.join(spec.name for spec in specs)})")
    feeds = {}
    for spec in specs:
        if spec.shape is None and spec.name not in shapes:
            raise ValueError(f"input {spec.name!r} has no known rank: give its shape (--shape {spec.name}=D0,D1,...)")
        shape = shapes.get(spec.name) or tuple(d if isinstance(d, int) else 1 for d in spec.shape)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, spec.dtype)
    return feeds


def quantized_kind(model: ir.Model) -> str:
    """int8, int4, int16, fp16, ...: the one low-precision kind the model computes or stores in (rule 4),
    else "the quantized model" (several kinds, or none found)."""
    kinds = set()
    for node in model.graph.nodes:
        if node.op_type in _BIT_PACKED_OPS:
            kinds.add(f"int{node.attributes['bits'].value if 'bits' in node.attributes else 4}")
        stored = node.inputs[:1] if node.op_type == "DequantizeLinear" else []
        kinds.update(_KINDS[v.dtype] for v in [*stored, *node.outputs] if v is not None and v.dtype in _KINDS)
    return kinds.pop() if len(kinds) == 1 else "the quantized model"


def file_bytes(path: str | os.PathLike) -> int:
    """What an ONNX file weighs with the external data files its tensors point at."""
    path = Path(path)
    proto = onnx.load_model(str(path), load_external_data=False)
    locations = {entry.value for tensor in onnx.external_data_helper._get_all_tensors(proto)
                 if onnx.external_data_helper.uses_external_data(tensor)
                 for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / location).stat().st_size for location in locations)


def rows_per_s(batch: int, median_ms: float) -> float:
    return batch / (median_ms / 1e3)


def _feeds_per_batch(feeds: Mapping[str, np.ndarray], specs: Sequence[InputSpec], batches: Sequence[int],
                     notes: list[str]) -> list[dict[str, np.ndarray]]:
    fixed = fixed_batch(specs)
    if fixed is None:
        return [batch_feed(feeds, batch) for batch in sorted(set(batches))]
    skipped = [b for b in sorted(set(batches)) if b != fixed]
    if skipped:
        notes.append(f"the model's batch dim is fixed at {fixed}: batch {', '.join(map(str, skipped))} "
                     f"skipped, batch {fixed} measured")
    return [dict(feeds)]


def _expected_ms(smaller: LatencyPair | None, batch: int) -> float:
    """A run of `batch` rows, by the slower model's median on a smaller batch scaled linearly (0: unknown)."""
    if smaller is None:
        return 0.0
    return max(smaller.float_model.median_ms, smaller.quant_model.median_ms) * batch / smaller.batch


def _setting_dict(pair: LatencyPair, verdict: str) -> dict[str, Any]:
    sides = {side: {"median_ms": latency.median_ms, "p90_ms": latency.p90_ms, "runs": latency.runs,
                    "rows_per_s": rows_per_s(pair.batch, latency.median_ms)}
             for side, latency in (("float", pair.float_model), ("quantized", pair.quant_model))}
    return {"batch": pair.batch, "threads": pair.threads, **sides, "ratio": pair.ratio, "verdict": verdict}


def _cells(latency: Latency, batch: int) -> str:
    """Median, p90 and rows/s, aligned under the table's header."""
    rate = rows_per_s(batch, latency.median_ms)
    rate_text = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
    return f"{ms_text(latency.median_ms):>12}  {ms_text(latency.p90_ms):>9}  {rate_text:>9}"
