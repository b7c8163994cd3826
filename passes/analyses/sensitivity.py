"""Sensitivity: what quantizing each unit costs the model's outputs, measured by real runs.

1. Units are what `rules.plans` quantizes together: a fusion group or a lone node, named
   by its first node (its first output's name when unnamed). A unit whose plan only
   passes its input's parameters on (MaxPool, Reshape: `output_follows` and nothing
   else) adds no rounding of its own and is left out. `work` weighs it (cost.py): the
   MACs of its compute op (an activation fused to it is free), else its elements.
2. A variant is the calibrated model with a precision per unit (`rules.PRECISIONS`; a
   unit not named keeps what the model says, int8 unless a recipe pinned it), cloned
   (`ir.clone_model`), emitted by the emission pipeline (the passes after the running
   one: place-qdq, fold-weights, cleanup; given the calibration data, which an emission
   pass such as bias-correct reads) and run in ONNX Runtime with its default
   optimizations, as a deployment runs it, on the evaluation feeds.
3. The reference is the calibrated model itself (still float: observers only annotate),
   run once; its outputs are kept, so `samples` bounds how many rows are used.
4. A variant's figure is the SQNR of each output against the reference over all rows
   (float64 sums), and their minimum; with a metric function, also the metric (called
   once on the outputs of all rows, in data order, higher is better); and the cost of
   the emitted variant (cost.emitted_cost: MACs x bytes as ONNX Runtime would compute).
5. Per unit: `alone` is the figure with only it quantized (every other unit fp32);
   `without` is all int8 but it at fp32; `gain` = without - all-int8 (dB), what keeping
   it float buys back. `sensitivity()` measures both for every unit.
6. `jobs` > 1 splits the variants into `jobs` shares run by an executor (infra/executor.py:
   local processes by default, or Ray tasks); each share gets the calibrated model, the
   feeds and the reference once.
7. Variants share what does not change between them: the calibrated model's constants
   are copied once to mapped files (fileio.MappedArrays), so each variant's export points
   at them instead of writing them, and the emission passes keep what they derive from
   a constant, such as a weight's codes, for the next variant (infra/variants.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from qcompiler import ir
from qcompiler.ir.evaluate import ErrorSums, ValueTap, joined, outputs_over
from qcompiler.ir.fileio import MappedArrays

from ..infra.base import PassError
from ..infra.context import PassContext
from ..infra.executor import Executor, LocalProcesses
from .cost import COMPUTE_OPS, emitted_cost, work
from ..infra.manager import PassManager
from ..infra.progress import Progress
from .rules import plans
from ..infra.target import Target
from ..infra.variants import VariantCache

Metric = Callable[[dict[str, np.ndarray]], float]


@dataclass(frozen=True)
class Unit:
    """Nodes quantized together (rule 1): positions in the model's node order, so a clone finds them."""

    name: str
    op_type: str
    positions: tuple[int, ...]
    work: int


@dataclass(frozen=True)
class Figure:
    """How a variant measures (rule 4): SQNR per output in dB, their minimum, and the metric if any."""

    sqnr_db: tuple[float, ...]
    metric: float | None = None
    cost: int = 0  # cost.emitted_cost of the variant

    @property
    def min_sqnr_db(self) -> float:
        return min(self.sqnr_db)


@dataclass
class UnitSensitivity:
    unit: Unit
    alone: Figure
    without: Figure
    gain_db: float


@dataclass
class SensitivityTable:
    """Rule 5 for every unit, with the all-int8 and reference figures and what it cost."""

    all_int8: Figure
    reference_metric: float | None
    rows: list[UnitSensitivity]
    runs: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def ranked(self) -> list[UnitSensitivity]:
        """Most sensitive first: the largest gain from keeping the unit float."""
        return sorted(self.rows, key=lambda r: (-r.gain_db, r.unit.work))

    def to_dict(self) -> dict:
        """Plain data (non-finite figures as "inf"/"-inf"/"nan" strings), most sensitive first."""
        return {"all_int8": _plain(self.all_int8), "reference_metric": self.reference_metric,
                "rows": [{"unit": r.unit.name, "op": r.unit.op_type, "work": r.unit.work, "alone": _plain(r.alone),
                          "without": _plain(r.without), "gain_db": _number(r.gain_db)} for r in self.ranked()],
                "runs": self.runs, "seconds": self.seconds, "notes": self.notes}

    def lines(self) -> list[str]:
        """The table for a person: SQNR in dB with only the unit int8, with all int8 but it, and the gain."""
        metric = self.reference_metric is not None
        width = max([4, *(len(r.unit.name) for r in self.rows)])
        head = f"{'rank':>4}  {'unit':<{width}}  {'op':<18} {'only it int8':>12} {'all but it':>10} {'gain':>7} {'work':>11}"
        out = [f"all int8: SQNR {self.all_int8.min_sqnr_db:.2f} dB"
               + (f", metric {self.all_int8.metric:.4f} (float {self.reference_metric:.4f})" if metric else ""), head]
        for rank, row in enumerate(self.ranked(), start=1):
            out.append(f"{rank:>4}  {row.unit.name:<{width}}  {row.unit.op_type:<18} "
                       f"{_db(row.alone.min_sqnr_db):>12} {_db(row.without.min_sqnr_db):>10} "
                       f"{row.gain_db:>+7.2f} {row.unit.work:>11}")
        return out


def units(model: ir.Model) -> list[Unit]:
    """Rule 1, in graph order."""
    positions = {node: i for i, node in enumerate(model.graph.nodes)}
    grouped: dict[object, list[ir.Node]] = {}
    for node, plan in plans(model).items():
        if not (plan.weights or plan.outputs or plan.inputs_follow_output) and "group" not in node.meta:
            continue  # passes its input's parameters on: no rounding of its own
        grouped.setdefault(node.meta.get("group", node), []).append(node)
    found = []
    for members in grouped.values():
        head = members[0]
        compute = [n for n in members if not n.domain and n.op_type in COMPUTE_OPS]
        found.append(Unit(head.name or head.outputs[0].name, head.op_type,
                          tuple(positions[n] for n in members), sum(work(n) for n in compute or members)))
    return found


class Evaluator:
    """Emits and measures variants of one calibrated model (rules 2-4, 7)."""

    def __init__(self, model: ir.Model, emit: str, feeds: Iterable[dict[str, np.ndarray]], *,
                 target: Target | None = None, metric: Metric | None = None, threads: int = 0,
                 calibration_data=None, share: bool = True) -> None:
        """`calibration_data` reaches the emission passes that read it (rule 2); `share=False`
        emits every variant from scratch (rule 7 off), for comparison."""
        self.emit, self.feeds, self.share = emit, list(feeds), share
        self.calibration_data = calibration_data
        self.target = target if target is not None else Target.named("ort-cpu")
        if not self.feeds:
            raise PassError("the evaluation data holds no samples")
        self.metric, self.threads, self.model = metric, threads, model
        self._share()
        reference = self._copy()
        self.reference = outputs_over(ValueTap(reference, reference.graph.outputs, threads=threads), self.feeds)
        self.reference_metric = metric(joined(self.reference)) if metric is not None else None
        self.runs = 0

    def _share(self) -> None:
        """Rule 7: where the constants are mapped, and the cache for what passes derive from them."""
        self._arrays = MappedArrays() if self.share else None
        self.variants = VariantCache(self._arrays) if self.share else None

    def _copy(self) -> ir.Model:
        """The model as it stands now (a pass may change it between measurements), its constants mapped."""
        return ir.clone_model(self.model, constants=self._arrays.map if self._arrays is not None else None)

    def close(self) -> None:
        """Remove the mapped files' folder (views already made keep their mapping); else it goes when collected."""
        if self._arrays is not None:
            self._arrays.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_arrays"], state["variants"]  # a worker maps its own copies (rule 6)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._share()

    def measure(self, levels: dict[Unit, str], forced: Unit | None = None) -> Figure:
        """The figure of the variant with these precisions (rule 2); `forced` is quantized even
        where its inputs arrive float (rules.py rule 3), as `alone` needs."""
        variant = self._copy()
        nodes = list(variant.graph.nodes)
        for unit, level in levels.items():
            for position in unit.positions:
                nodes[position].meta["precision"] = level
        for position in forced.positions if forced is not None else ():
            nodes[position].meta["quantize"] = True
        PassManager(self.emit).run(variant, PassContext(target=self.target, variants=self.variants,
                                                        calibration_data=self.calibration_data))
        outputs = outputs_over(ValueTap(variant, variant.graph.outputs, threads=self.threads), self.feeds)
        self.runs += 1
        sqnr = tuple(_sqnr(name, self.reference[name], outputs[name]) for name in self.reference)
        return Figure(sqnr, self.metric(joined(outputs)) if self.metric is not None else None,
                      emitted_cost(variant, self.target))


def sensitivity(evaluator: Evaluator, all_units: Sequence[Unit], *, jobs: int = 1, executor: Executor | None = None,
                progress: Progress | None = None) -> SensitivityTable:
    """Rule 5 for every unit: 2 variants each, plus the all-int8 one."""
    start = time.perf_counter()
    variants = [({}, None)] + [v for unit in all_units for v in ((_only(unit, all_units), unit), ({unit: "fp32"}, None))]
    figures = measure_all(evaluator, variants, jobs=jobs, executor=executor, progress=progress)
    all_int8 = figures[0]
    rows = [UnitSensitivity(unit, figures[1 + 2 * i], figures[2 + 2 * i],
                            _gain(figures[2 + 2 * i], all_int8)) for i, unit in enumerate(all_units)]
    return SensitivityTable(all_int8, evaluator.reference_metric, rows, len(variants), time.perf_counter() - start)


def measure_all(evaluator: Evaluator, variants: list[tuple[dict[Unit, str], Unit | None]], *, jobs: int = 1,
                executor: Executor | None = None, progress: Progress | None = None) -> list[Figure]:
    """The figure of each (levels, forced unit) variant, in order; in `jobs` shares on `executor`
    (local processes when None) when more than one (rule 6)."""
    try:
        if jobs <= 1 or len(variants) < 2:
            figures = []
            for levels, forced in variants:
                figures.append(evaluator.measure(levels, forced))
                if progress is not None:
                    progress.advance()
            return figures
        shares = [variants[i::jobs] for i in range(jobs)]
        results = (executor or LocalProcesses()).map(_measure_in_worker, [(evaluator, share) for share in shares])
        evaluator.runs += len(variants)
        if progress is not None:
            progress.advance(len(variants))
        figures = [None] * len(variants)
        for i, share in enumerate(results):
            figures[i::jobs] = share
        return figures
    finally:
        if progress is not None:
            progress.close()


def _measure_in_worker(work_item: tuple[Evaluator, list]) -> list[Figure]:
    evaluator, share = work_item
    try:
        return [evaluator.measure(levels, forced) for levels, forced in share]
    finally:
        evaluator.close()  # now: a pool may end this process before the evaluator is collected


def _only(unit: Unit, all_units: Sequence[Unit]) -> dict[Unit, str]:
    return {other: ("int8" if other is unit else "fp32") for other in all_units}


def _gain(without: Figure, all_int8: Figure) -> float:
    gain = without.min_sqnr_db - all_int8.min_sqnr_db
    return gain if math.isfinite(gain) else (math.inf if without.min_sqnr_db == math.inf else 0.0)


def _sqnr(name: str, reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Rule 4's SQNR of one output over every feed; -inf when the variant makes NaN/Inf the float model does not."""
    sums = ErrorSums(name)
    for want, got in zip(reference, actual):
        sums.add(want, got)
    metrics = sums.metrics()
    return -math.inf if metrics.nonfinite else metrics.sqnr_db


def figure_from_dict(stored: dict) -> Figure:
    """The inverse of the figures in `SensitivityTable.to_dict`."""
    return Figure(tuple(float(v) for v in stored["sqnr_db"]), stored["metric"], stored["cost"])


def _plain(figure: Figure) -> dict:
    return {"sqnr_db": [_number(v) for v in figure.sqnr_db], "metric": figure.metric, "cost": figure.cost}


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _db(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else str(value)
