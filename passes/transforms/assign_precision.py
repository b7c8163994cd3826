"""assign-precision: the cheapest precision per unit that keeps the model within a budget, found by real runs.

It runs after calibrate and before place-qdq, and only decides: it sets
`node.meta["precision"]` (rules.PRECISIONS) on the nodes of each unit it promotes
(sensitivity.py rule 1), and place-qdq and fold-weights emit what it chose. Deciding
before emission keeps the float weights at hand and leaves Q/DQ creation to one pass.
Every figure below comes from a variant emitted by the passes that follow this one in
the pipeline and run in ONNX Runtime (sensitivity.py rules 2-4).

1. Budget: `min_sqnr_db`, the lowest output SQNR against the float model; or `metric`
   (FILE.py:function, called on the outputs of all evaluation rows, higher is better)
   with `max_drop`, how far it may fall below the float model's value. Exactly one.
2. Data: the first `samples` rows of ctx.evaluation_data, else of the calibration data
   (the report says which and how many rows: figures on the data the scales came from
   flatter, and the budget holds on these rows, which validation may not be limited to).
3. Units an override already pinned (a `precision` mark, or kept float) keep their
   level; the others start at int8. When all-int8 meets the budget nothing changes.
4. Sensitivity: each free unit alone at the widest allowed level (fp32 by default), the
   rest int8; units rank by what that
   buys back (the score gain: dB, or metric), ties to the cheaper unit.
5. Feasibility: with every free unit at that level but the least sensitive, the budget must
   be met; otherwise it cannot be met by any assignment that still quantizes something,
   and the pass fails with the best figure it reached.
6. Promotion: the top k ranked units go to that level for k = 1, 2, 4, ... until the budget
   is met, then bisection finds the smallest k that meets it.
7. Lowering: each promoted unit, least sensitive first, tries the cheaper `levels`
   (w8a16 only where the target has 16-bit activations, dynamic only when
   dynamic-quant{marked_only=true} follows in the pipeline) and keeps the one whose variant
   meets the budget at the lowest cost (rule 8), ties to the earlier level (smaller
   weights); its top level stays when none is cheaper.
8. Cost is measured on each emitted variant (cost.emitted_cost: MACs x the bytes ONNX
   Runtime's CPU provider computes with, 1 for 8-bit kernels, 4 for float). A w8a16
   unit turns the values it shares 16-bit, so its neighbours lose their 8-bit kernels
   too: the variant's cost says so, where a per-unit table would not.
9. ctx.report["assign-precision"] holds the budget, the figures at all-int8 and at the
   end, each promoted unit (name, op, gain, level, work), the share of work left at
   int8, the emitted cost against all-int8's, the number of runs and the seconds spent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

from qcompiler import ir
from qcompiler.ir.evaluate import first_rows, rows_of

from ..infra.base import Pass, PassError, register_pass
from ..infra.executor import Executor
from ..infra.pipeline import parse_pipeline
from ..infra.plugins import load_function
from ..infra.progress import SWITCH, Progress
from ..analyses.rules import PRECISIONS
from ..analyses.sensitivity import Evaluator, Figure, Unit, measure_all, units
from ..infra.target import Target


class BudgetUnreachable(PassError):
    """No assignment meets the budget: with every unit but one promoted, the model still falls short."""


@register_pass
class AssignPrecision(Pass):
    """Promote the units that hurt most to wider precisions until the model meets a budget."""

    name = "assign-precision"
    reads = frozenset({"quantize", "precision", "group"})
    writes = frozenset({"precision"})
    needs = frozenset({"calibrated"})

    @dataclass
    class Options:
        """min_sqnr_db: lowest output SQNR allowed; or metric (FILE.py:function) with max_drop.
        levels: what units may be promoted to; samples: evaluation rows used; jobs: shares
        of the sensitivity runs, each run by the context's executor; progress: auto (on a
        terminal), on or off."""

        min_sqnr_db: float | None = None
        metric: str = ""
        max_drop: float | None = None
        levels: tuple[str, ...] = ("w8a16", "fp16", "fp32")
        samples: int = 256
        jobs: int = 1
        progress: Literal["auto", "on", "off"] = "auto"

    def requires(self, model: ir.Model, ctx) -> None:
        options = self.options
        if (options.min_sqnr_db is None) == (not options.metric):
            raise PassError("assign-precision needs one budget: min_sqnr_db=DB, or metric=FILE.py:function "
                            "with max_drop=X")
        if options.metric and options.max_drop is None:
            raise PassError("assign-precision{metric=...} needs max_drop: how far the metric may fall below "
                            "the float model's")
        unknown = [level for level in options.levels if level not in PRECISIONS or level == "int8"]
        if unknown or not options.levels:
            raise PassError(f"assign-precision{{levels=...}} takes some of {', '.join(PRECISIONS[1:])}, "
                            f"not {', '.join(unknown) or 'nothing'}")
        if "place-qdq" not in parse_pipeline(ctx.following).pass_names():
            raise PassError("assign-precision decides before Q/DQ are placed: run it after calibrate and "
                            "before place-qdq and fold-weights, which it uses to emit each variant")
        if ctx.evaluation_data is None and ctx.calibration_data is None:
            raise PassError("assign-precision needs evaluation data to measure variants on")
        if options.samples < 1 or options.jobs < 1:
            raise PassError("assign-precision: samples and jobs must be at least 1")
        if options.metric and options.jobs > 1:
            raise PassError("assign-precision: a metric function runs in this process only; use jobs=1 with metric")

    def run(self, model: ir.Model, ctx) -> bool:
        start = time.perf_counter()
        data = ctx.evaluation_data if ctx.evaluation_data is not None else ctx.calibration_data
        metric = load_function(self.options.metric, "metric") if self.options.metric else None
        evaluator = Evaluator(model, ctx.following, first_rows(data, self.options.samples), target=ctx.target,
                              metric=metric, calibration_data=ctx.calibration_data)
        budget = _Budget(self.options.min_sqnr_db, self.options.max_drop, evaluator.reference_metric)
        nodes = list(model.graph.nodes)
        free = [u for u in units(model) if not any("precision" in nodes[p].meta for p in u.positions)]  # rule 3
        levels = self._levels(ctx.target, parse_pipeline(ctx.following).pass_names())
        if not levels:
            raise PassError(f"assign-precision: target {ctx.target} takes none of levels={','.join(self.options.levels)}")
        search = _Search(evaluator, budget, free, levels, SWITCH[self.options.progress], self.options.jobs, ctx.executor)
        chosen = search.run()
        for unit, level in chosen.items():
            for position in unit.positions:
                nodes[position].meta["precision"] = level
        self.stats["promoted"] += len(chosen)
        self.stats["runs"] += evaluator.runs
        ctx.report["assign-precision"] = search.report(chosen, ctx.evaluation_data is None,
                                                       time.perf_counter() - start)
        return bool(chosen)

    def _levels(self, target: Target, following: list[str]) -> list[str]:
        """Rule 7: the allowed levels in PRECISIONS order, w8a16 only where the target has 16-bit activations,
        dynamic only where a following dynamic-quant emits it."""
        return [level for level in PRECISIONS if level in self.options.levels
                and (level != "w8a16" or "int16" in target.accepts)
                and (level != "dynamic" or "dynamic-quant" in following)]



@dataclass(frozen=True)
class _Budget:
    """Rule 1 as a score (higher is better) and a threshold on it."""

    min_sqnr_db: float | None
    max_drop: float | None
    reference_metric: float | None

    def score(self, figure: Figure) -> float:
        value = figure.min_sqnr_db if self.min_sqnr_db is not None else figure.metric
        return value if value is not None and not math.isnan(value) else -math.inf

    def met(self, figure: Figure) -> bool:
        if self.min_sqnr_db is not None:
            return self.score(figure) >= self.min_sqnr_db
        return self.reference_metric - self.score(figure) <= self.max_drop

    def describe(self) -> str:
        if self.min_sqnr_db is not None:
            return f"output SQNR >= {self.min_sqnr_db:g} dB"
        return f"metric drop <= {self.max_drop:g} (float model: {self.reference_metric:.4g})"

    def show(self, figure: Figure) -> str:
        if self.min_sqnr_db is not None:
            return f"SQNR {figure.min_sqnr_db:.2f} dB"
        return f"metric {figure.metric:.4g} (drop {self.reference_metric - figure.metric:.4g})"


class _Search:
    """Rules 3-7 over the free units; every step a measured variant."""

    def __init__(self, evaluator: Evaluator, budget: _Budget, free: list[Unit], levels: list[str],
                 progress: bool | None, jobs: int, executor: Executor) -> None:
        self.evaluator, self.budget, self.free, self.progress = evaluator, budget, free, progress
        self.jobs, self.executor = jobs, executor
        self.levels, self.top = levels, levels[-1]  # promotion goes to the widest allowed level
        self.all_int8 = self.final = evaluator.measure({})
        self.gains: dict[Unit, float] = {}

    def run(self) -> dict[Unit, str]:
        if self.budget.met(self.all_int8) or not self.free:
            return {}
        ranked = self._ranked()
        self._check_feasible(ranked)
        return self._lower(self._promote(ranked))

    def _ranked(self) -> list[Unit]:
        progress = Progress("sensitivity", len(self.free), "variants", enabled=self.progress)
        figures = measure_all(self.evaluator, [({unit: self.top}, None) for unit in self.free], jobs=self.jobs,
                              executor=self.executor, progress=progress)
        base = self.budget.score(self.all_int8)
        self.gains = {unit: self.budget.score(f) - base for unit, f in zip(self.free, figures)}
        return sorted(self.free, key=lambda u: (-self.gains[u], u.work))

    def _check_feasible(self, ranked: list[Unit]) -> None:
        figure = self.evaluator.measure({unit: self.top for unit in ranked[:-1]})
        if not self.budget.met(figure):
            raise BudgetUnreachable(f"assign-precision cannot meet {self.budget.describe()}: with every unit but "
                            f"{ranked[-1].name!r} at {self.top} the model reaches {self.budget.show(figure)} "
                            f"(all int8: {self.budget.show(self.all_int8)}); relax the budget or keep the "
                            "float model")

    def _promote(self, ranked: list[Unit]) -> list[Unit]:
        """Rule 6: the smallest top-k at the widest level that meets the budget."""
        missed, k = 0, 1
        while True:
            k = min(k, len(ranked) - 1)
            figure = self.evaluator.measure({unit: self.top for unit in ranked[:k]})
            if self.budget.met(figure):
                break
            missed, k = k, 2 * k
        hit, self.final = k, figure
        while hit - missed > 1:
            middle = (missed + hit) // 2
            figure = self.evaluator.measure({unit: self.top for unit in ranked[:middle]})
            if self.budget.met(figure):
                hit, self.final = middle, figure
            else:
                missed = middle
        return ranked[:hit]

    def _lower(self, promoted: list[Unit]) -> dict[Unit, str]:
        """Rule 7: least sensitive first, the cheapest level whose variant keeps the budget met."""
        chosen = {unit: self.top for unit in promoted}
        for unit in reversed(promoted):
            best = self.final
            for level in self.levels[:-1]:
                figure = self.evaluator.measure({**chosen, unit: level})
                cheaper = figure.cost < best.cost or (figure.cost == best.cost and chosen[unit] == self.top)
                if self.budget.met(figure) and cheaper:
                    chosen[unit], best = level, figure
            self.final = best
        return chosen

    def report(self, chosen: dict[Unit, str], on_calibration: bool, seconds: float) -> dict:
        total = sum(u.work for u in self.free) or 1
        int8_work = sum(u.work for u in self.free if u not in chosen)
        return {
            "budget": self.budget.describe(),
            "all_int8": self.budget.show(self.all_int8),
            "final": self.budget.show(self.final),
            "promoted": [{"unit": u.name, "op": u.op_type, "gain": round(self.gains.get(u, 0.0), 3),
                          "level": level, "work": u.work} for u, level in chosen.items()],
            "int8_work_share": round(int8_work / total, 4),
            "cost": self.final.cost,
            "cost_all_int8": self.all_int8.cost,
            "runs": self.evaluator.runs,
            "seconds": round(seconds, 3),
            "data": "calibration data" if on_calibration else "evaluation data",
            "rows": sum(rows_of(feed) for feed in self.evaluator.feeds),
        }
