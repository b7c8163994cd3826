"""Whether the task's answer holds: a measure for each output that fits what the output is.

Without a user metric, the question for a quantized model is whether a downstream reader
of each output would decide the same: the same class, the same character at each CTC
step, the same pixel above a threshold, an embedding pointing the same way. SQNR cannot
say that (a speech detector keeps its decisions at 24 dB; no real int8 model reaches 40).

1. The kind of an output is read from the float graph, walking back through ops that
   move values without computing them (Reshape, Transpose, Squeeze, Cast, Q/DQ, ...):
   - Softmax or LogSoftmax over rank 2 [batch, classes], or a linear head (Gemm, MatMul,
     past its bias Add) of rank 2 with more than one column: classifier scores, judged
     by top-1 agreement;
   - Softmax or LogSoftmax over a rank >= 3 tensor (CTC steps, segmentation pixels):
     class scores per position, judged by argmax agreement along the softmax axis at
     each position;
   - Sigmoid (a probability or score map: speech presence, a text detector's map):
     agreement of the decision p > 0.5 at each element, and a relative RMS error within
     a guard, so decisions that agree only because every value sits far from 0.5 while
     the map itself is lost do not pass;
   - anything else float (hidden states, pooled embeddings, feature maps, regressions,
     recurrent states): the mean cosine similarity of its vectors along the last axis
     (rank <= 3) or of each sample flattened (rank >= 4, feature maps); vectors of one
     element are compared as one vector over the whole output.
   Integer and boolean outputs must match exactly (agreement of the values).
2. A tolerance t (percent, default 1) reads the same way for each kind: agreement >=
   100 - t %; cosine >= 1 - t / 100; for probabilities also a relative RMS error <=
   25 t % (SQNR >= 12 dB at t = 1). `floor` and `holds` state the bound and the verdict.
3. Sums stream batch by batch (`TaskSums`), like ir/evaluate.py's ErrorSums, so
   validation holds one batch whatever the amount of data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcompiler import ir

_TRANSPARENT = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "CastLike",
    "QuantizeLinear", "DequantizeLinear", "Dropout",
})
_SOFTMAX = frozenset({"Softmax", "LogSoftmax"})
_LINEAR = frozenset({"Gemm", "MatMul", "MatMulInteger", "QGemm", "MatMulNBits"})
_DECISION_THRESHOLD = 0.5
_GUARD_PER_POINT = 0.25  # relative RMS error allowed for probabilities, per point of tolerance


@dataclass(frozen=True)
class Measure:
    """How one output is judged: `kind` is top1, argmax, decision, cosine or exact; `axis` where it applies."""

    kind: str
    axis: int | None = None

    def describe(self) -> str:
        return {
            "top1": "top-1 agreement",
            "argmax": f"argmax agreement per position (axis {self.axis})",
            "decision": f"decision agreement (p > {_DECISION_THRESHOLD:g})",
            "cosine": "mean cosine " + ("per sample" if self.axis is None else "of last-axis vectors"),
            "exact": "exact agreement",
        }[self.kind]

    def text(self, value: float) -> str:
        """The measure and `value` in its units: a cosine, else a percentage."""
        return f"{self.describe()} {_figure(self.describe(), value)}"


def measure_of(output: ir.Value) -> Measure:
    """Rule 1: the measure for a graph output of the float model."""
    if output.dtype is not None and not output.dtype.is_float:
        return Measure("exact")
    rank = len(output.shape) if output.shape is not None else None
    producer = _computing_producer(output)
    op = producer.op_type if producer is not None else None
    if op in _SOFTMAX:
        axis = producer.attr("axis", -1)
        if rank is not None:
            axis = axis % rank
        return Measure("top1", 1) if rank == 2 and axis == 1 else Measure("argmax", axis)
    if op == "Sigmoid":
        return Measure("decision")
    if op in _LINEAR and rank == 2 and _columns(output) != 1:
        return Measure("top1", 1)
    if rank is not None and rank >= 4:
        return Measure("cosine")
    return Measure("cosine", -1)


def measures(model: ir.Model) -> dict[str, Measure]:
    """Each graph output's measure, by name."""
    return {value.name: measure_of(value) for value in model.graph.outputs}


def floor(tolerance: float) -> float:
    """Rule 2: the lowest agreement or cosine that holds at `tolerance` percent."""
    return 1 - tolerance / 100


def holds(measure: Measure, value: float, sqnr_db: float, tolerance: float) -> tuple[bool, str]:
    """Rule 2: whether `value` (and, for probabilities, the SQNR) holds, and what fell short if not."""
    if not value >= floor(tolerance):
        return False, f"{measure.text(value)} < {_figure(measure.describe(), floor(tolerance))}"
    if measure.kind == "decision":
        guard = min(_GUARD_PER_POINT * tolerance, 1.0)
        error = 10 ** (-sqnr_db / 20) if math.isfinite(sqnr_db) else (0.0 if sqnr_db > 0 else math.inf)
        if not error <= guard:
            return False, f"relative RMS error {error:.1%} > {guard:.0%} (SQNR {sqnr_db:.1f} dB)"
    return True, ""


class TaskSums:
    """Rule 3: the running figure of one output under its measure."""

    def __init__(self, name: str, measure: Measure) -> None:
        self.name, self.measure = name, measure
        self.agreeing = self.compared = 0
        self.cosines = 0.0
        self.whole = [0.0, 0.0, 0.0]  # r.r, q.q, r.q: one-element vectors compare as one vector

    def add(self, ref: np.ndarray, quant: np.ndarray) -> None:
        kind = self.measure.kind
        if kind in ("top1", "argmax"):
            axis = self.measure.axis
            self._agree(ref.argmax(axis=axis), quant.argmax(axis=axis))
        elif kind == "decision":
            self._agree(ref > _DECISION_THRESHOLD, quant > _DECISION_THRESHOLD)
        elif kind == "exact":
            self._agree(ref, quant)
        else:
            self._cosine(np.asarray(ref, np.float64), np.asarray(quant, np.float64))

    def value(self) -> float:
        if self.measure.kind == "cosine" and self.compared == 0:
            return _cosine(*self.whole)
        return (self.cosines if self.measure.kind == "cosine" else self.agreeing) / max(self.compared, 1)

    def _agree(self, ref: np.ndarray, quant: np.ndarray) -> None:
        self.agreeing += int(np.count_nonzero(ref == quant))
        self.compared += ref.size

    def _cosine(self, ref: np.ndarray, quant: np.ndarray) -> None:
        per_vector = self.measure.axis == -1 and ref.ndim > 0
        rows = (-1, ref.shape[-1]) if per_vector else (ref.shape[0] if ref.ndim else 1, -1)
        r, q = ref.reshape(rows), quant.reshape(rows)
        if r.shape[1] < 2:
            r, q = r.ravel(), q.ravel()
            self.whole = [self.whole[0] + float(r @ r), self.whole[1] + float(q @ q), self.whole[2] + float(r @ q)]
            return
        finite = np.isfinite(r).all(axis=1) & np.isfinite(q).all(axis=1)  # a vector with NaN/Inf counts as 0
        r, q = r[finite], q[finite]
        rr, qq, rq = (np.einsum("ij,ij->i", a, b) for a, b in ((r, r), (q, q), (r, q)))
        both_zero = (rr == 0) & (qq == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = np.where(both_zero, 1.0, np.nan_to_num(rq / np.sqrt(rr * qq), nan=0.0))
        self.cosines += float(cosine.sum())
        self.compared += finite.size


def task_text(metrics: ir.evaluate.OutputMetrics) -> str | None:
    """The figure a reader of this output looks at: top-1 agreement for a classifier (or where no
    measure was recorded), else the task measure; None when there is neither."""
    if metrics.top1_agreement is not None and metrics.measure in (None, "top-1 agreement"):
        return f"top-1 agreement {100 * metrics.top1_agreement:.1f}%"
    return measure_text(metrics) if metrics.measure is not None else None


def measure_text(metrics: ir.evaluate.OutputMetrics) -> str:
    """The task figure compare_models recorded on `metrics`, as Measure.text writes it."""
    return f"{metrics.measure} {_figure(metrics.measure, metrics.measure_value)}"


def _figure(description: str, value: float) -> str:
    """A figure of the measure `description` names: a cosine to five places, else a percentage."""
    return f"{value:.5f}" if description.startswith("mean cosine") else f"{100 * value:.2f}%"


def _cosine(rr: float, qq: float, rq: float) -> float:
    if rr == 0 or qq == 0:
        return 1.0 if rr == qq else 0.0
    return rq / math.sqrt(rr * qq)


def _computing_producer(value: ir.Value) -> ir.Node | None:
    """The node that computed `value`, past the ops that only move or re-type it."""
    node = value.producer
    while node is not None and node.inputs and node.inputs[0] is not None and (
            node.op_type in _TRANSPARENT or _is_bias_add(node)):
        node = next(v for v in node.inputs if v is not None and not v.is_const).producer \
            if node.op_type == "Add" else node.inputs[0].producer
    return node


def _is_bias_add(node: ir.Node) -> bool:
    """An Add of a constant to a computed value: a layer's bias, not a computation of its own."""
    return node.op_type == "Add" and len(node.inputs) == 2 and sum(v is not None and v.is_const
                                                                    for v in node.inputs) == 1


def _columns(value: ir.Value) -> int | None:
    dim = value.shape[-1] if value.shape else None
    return dim if isinstance(dim, int) else None
