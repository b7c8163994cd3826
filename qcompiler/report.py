"""The compile report: what was done to the model, and how the result measures against the float one.

Every figure comes from a measurement in this compile (ONNX Runtime runs, byte counts,
node counts); `summary()` gives the lines the CLI prints and `to_json()` the file
`--report` writes. Non-finite numbers (an exact output's SQNR) are written as "inf".
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from qcompiler.acceptance import task_text
from qcompiler.schemes import summary_line


@dataclass
class PassRecord:
    name: str
    seconds: float
    changed: bool
    stats: dict[str, int]


@dataclass
class CompileReport:
    source: str
    target: str
    pipeline: str
    settings: dict[str, str] = field(default_factory=dict)
    passes: list[PassRecord] = field(default_factory=list)
    compile_seconds: float = 0.0
    size_bytes: dict[str, int] = field(default_factory=dict)
    qdq_nodes: dict[str, int] = field(default_factory=dict)
    ops_without_rule: dict[str, int] = field(default_factory=dict)
    validation_data: str = ""
    outputs: list[Any] = field(default_factory=list)  # ir.evaluate.OutputMetrics
    kernels: Any = None  # kernels.KernelReport
    latency: Any = None  # validate.LatencyPair: the benchmark's first setting (batch 1, 1 thread)
    bench: Any = None  # bench.Benchmark
    precision: dict[str, Any] | None = None  # assign-precision's report, when it ran
    weight_only: dict[str, Any] | None = None  # weight-only's report, when it ran
    embeddings: dict[str, Any] | None = None  # quantize-embeddings' report, when it stored a table
    smoothing: dict[str, Any] | None = None  # smooth-quant's report, when it ran: each value's outlier ratio
    ranges: dict[str, Any] | None = None  # choose-ranges' report, when it ran: each value whose range it changed
    linears: list[dict[str, Any]] = field(default_factory=list)  # each Linear's scheme (qcompiler/schemes.py)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        plain = _plain(dataclasses.asdict(self))
        if self.bench is not None:
            plain["bench"] = _plain(self.bench.to_dict())  # with the throughput and verdict of each setting
        return plain

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def summary(self) -> list[str]:
        """A few lines for a person: accuracy, integer share, size, speed, warnings."""
        lines = [f"compiled {self.source} for {self.target} in {self.compile_seconds:.1f} s"]
        lines.extend(f"  {role}: {self.settings[role]}" for role in ("pipeline", "calibration data", "evaluation data")
                     if role in self.settings)
        for metrics in self.outputs:
            task = task_text(metrics)
            lines.append(f"  output {metrics.name}: SQNR {metrics.sqnr_db:.1f} dB, cosine {metrics.cosine:.4f}, "
                         f"max abs error {metrics.max_abs_error:.3g}{f', {task}' if task else ''}  "
                         f"({self.validation_data})")
        if self.kernels is not None:
            lines.append(f"  integer kernels: {self.kernels.integer_share:.0%} of Conv/MatMul/Gemm MACs")
        if self.size_bytes:
            before, after = self.size_bytes["float"], self.size_bytes["quantized"]
            lines.append(f"  size: {megabytes(before)} -> {megabytes(after)} ({after / max(before, 1):.0%})")
        lines.append(f"  Q/DQ nodes: {self.qdq_nodes.get('QuantizeLinear', 0)} QuantizeLinear, "
                     f"{self.qdq_nodes.get('DequantizeLinear', 0)} DequantizeLinear")
        if self.ops_without_rule:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.ops_without_rule.items()))
            lines.append(f"  stay float (no rule): {ops}")
        if self.precision is not None:
            lines.extend(_precision_lines(self.precision))
        if self.weight_only is not None:
            lines.append(_weight_only_line(self.weight_only))
        if self.embeddings is not None:
            lines.append(_embeddings_line(self.embeddings))
        if self.linears:
            lines.append(summary_line(self.linears))
        if self.bench is not None:
            lines.append(f"  speed, float vs {self.bench.quantized} in ONNX Runtime:")
            lines.extend(f"    {line}" for line in self.bench.lines())
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return lines


def _weight_only_line(found: dict[str, Any]) -> str:
    kind = f"{'' if found['symmetric'] else 'u'}int{found['bits']}"
    return (f"  weights: {found['weights']} stored {kind} in blocks of {found['block_size']} ({found['format']}), "
            f"{megabytes(found['float_bytes'])} -> {megabytes(found['quantized_bytes'])} "
            f"({found['ratio']:.1f}x smaller); {found['skipped']} left float" + _rounding_note(found))


def _rounding_note(found: dict[str, Any]) -> str:
    """How gptq or awq did against rounding to nearest, on the calibration data (nothing for rtn)."""
    if "output_sqnr_db" not in found:
        return ""
    return (f"; codes by {found['method']}: mean layer output SQNR {found['output_sqnr_db']:.1f} dB on the "
            f"calibration data, {found['rtn_output_sqnr_db']:.1f} dB rounding to nearest")


def _embeddings_line(found: dict[str, Any]) -> str:
    kind = "int4" if found["bits"] == 4 else "uint8"
    return (f"  embedding tables: {found['tables']} stored {kind} in blocks of {found['block_size']}, "
            f"{megabytes(found['float_bytes'])} -> {megabytes(found['quantized_bytes'])} "
            f"({found['ratio']:.1f}x smaller); {found['skipped']} left float")


def _precision_lines(precision: dict[str, Any]) -> list[str]:
    promoted = precision["promoted"]
    lines = [f"  precision: {len(promoted)} unit(s) promoted for {precision['budget']}: {precision['all_int8']} "
             f"all int8 -> {precision['final']}; {precision['int8_work_share']:.0%} of the work stays int8 "
             f"({precision['runs']} runs, {precision['seconds']:.1f} s, on {precision['rows']} rows of the "
             f"{precision['data']})"]
    lines.extend(f"    {p['unit']} ({p['op']}): {p['level']}, gain {p['gain']:+.2f} alone" for p in promoted)
    return lines


def megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
