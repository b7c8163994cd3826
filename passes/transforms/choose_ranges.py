"""choose-ranges: per observed value, the clipping range that serves the model's outputs best, found by real runs.

It runs after calibrate and before place-qdq and only decides: it rewrites `observed_range`
(and `observer_state`) of the values it changes, which place-qdq turns into scales. Every
output SQNR below is that of a variant emitted by the passes following this one in the
pipeline and run in ONNX Runtime (sensitivity.py rules 2-4), against the float model.

1. Candidates: for each value that leads its parameters (`rules.quantized_values`) and was
   calibrated (unless its producer or a reader has an `algorithms` mark that leaves
   choose-ranges out: overrides.py rule 4), one range per method in `methods` (minmax, percentile-P for percentile P,
   mse, entropy; the histogram observers with their default options). All candidate
   observers are fed in one pass over the calibration data (`observers.observe`, each
   value repeated once per method), so a candidate equals what calibrate gives with that
   method alone.
2. Data: the first `samples` rows of the calibration data, the rows the ranges came from:
   the evaluation data stays held out, so validation on it judges the choice honestly.
3. Ranking: each leader's own rounding error under its calibrated range, as the SQNR of
   its float data against that data quantized to uint8 over the range (numpy, on the rows
   of rule 2); the `top` worst values are tried, worst first. A proxy, one pass over the
   data: what it picks is only kept on the outputs' word (rule 4).
4. Choice, greedy coordinate descent: from the ranges calibrate chose, each ranked value
   tries each candidate differing from its current range; a candidate is kept when its
   variant raises the lowest output SQNR, and later values are tried on top of the kept
   changes. The outputs can thus only improve on the calibrated ranges.
5. Cost: 1 variant for the start, then at most `top` x (len(methods) - 1) variants, plus
   one pass over the calibration data (rule 1) and one over `samples` rows (rule 3).
   `time_budget_s` stops the search before the next variant once spent (0: nothing is
   tried, nothing changes).
6. A follower of a changed leader takes its new range too, as calibrate gives it.
7. ctx.report["choose-ranges"]: the output SQNR at the start and the end, each changed
   value (method, output SQNR before and after), the variants measured and the seconds.

    %c: f32[N,8] range=[-3.1, 40.2] meta{observer="minmax"}  =>  %c: f32[N,8] range=[-3.1, 6.4] ...
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from qcompiler import ir
from qcompiler.ir import DType, QuantParams
from qcompiler.ir.evaluate import ErrorSums, first_rows, main_values
from qcompiler.ir.quant import dequantize, quantize

from ..analyses.observers import Observer, ObserverOptions, observe, tapped_batches
from ..analyses.rules import quantized_values
from ..analyses.sensitivity import Evaluator
from ..infra.base import Pass, PassError, register_pass
from ..infra.overrides import chosen
from ..infra.pipeline import parse_pipeline
from ..infra.progress import Progress

_HISTOGRAM_METHODS = ("mse", "entropy")


@register_pass
class ChooseRanges(Pass):
    """Try several clipping ranges on the values whose rounding hurts most; keep those that raise the output SQNR."""

    name = "choose-ranges"
    reads = frozenset({"observer", "observer_state", "algorithms"})
    writes = frozenset({"observer_state"})
    algorithm = True
    needs = frozenset({"calibrated"})

    @dataclass
    class Options:
        """methods: candidate ranges (minmax, percentile-P, mse, entropy); top: values tried;
        samples: calibration rows the variants run on; time_budget_s: seconds of search."""

        methods: tuple[str, ...] = ("minmax", "percentile-99.99", "percentile-99.9", "mse", "entropy")
        top: int = 16
        samples: int = 64
        time_budget_s: float = 300.0

    def requires(self, model: ir.Model, ctx) -> None:
        for method in self.options.methods:
            _spec(method)
        if "place-qdq" not in parse_pipeline(ctx.following).pass_names():
            raise PassError("choose-ranges decides before Q/DQ are placed: run it after calibrate and before "
                            "place-qdq, which it uses to emit each variant")
        if ctx.calibration_data is None:
            raise PassError("choose-ranges needs the calibration data to observe candidate ranges on")
        if self.options.top < 0 or self.options.samples < 1:
            raise PassError("choose-ranges: top must be at least 0 and samples at least 1")

    def run(self, model: ir.Model, ctx) -> bool:
        start = time.perf_counter()
        leaders = [v for v in main_values(model) if "observer" in v.meta and v.observed_range is not None
                   and all(chosen(node, self.name) for node in (v.producer, *v.consumers()) if node is not None)]
        evaluator = Evaluator(model, ctx.following, first_rows(ctx.calibration_data, self.options.samples),
                              target=ctx.target, calibration_data=ctx.calibration_data)
        best = evaluator.measure({}).min_sqnr_db
        report = {"start_sqnr_db": _number(best), "changed": []}
        if leaders and self.options.top and self.options.time_budget_s > 0:
            candidates = self._candidates(model, leaders, ctx.calibration_data)
            followers = _followers(model)
            for value in _ranked(model, leaders, evaluator.feeds)[:self.options.top]:
                tried = self._try(value, candidates[value], followers.get(value, []), evaluator, best, start)
                if tried is None:
                    continue
                method, sqnr = tried
                report["changed"].append({"value": value.name, "method": method, "range": list(value.observed_range),
                                          "sqnr_before_db": _number(best), "sqnr_after_db": _number(sqnr)})
                best = sqnr
        self.stats["changed"] += len(report["changed"])
        self.stats["variants"] += evaluator.runs
        ctx.report["choose-ranges"] = {**report, "end_sqnr_db": _number(best), "variants": evaluator.runs,
                                       "seconds": round(time.perf_counter() - start, 3)}
        return bool(report["changed"])

    def _candidates(self, model: ir.Model, leaders: list[ir.Value], data) -> dict[ir.Value, dict[str, Observer]]:
        """Rule 1: one observer per value and method, all fed in one pass over the data."""
        methods = self.options.methods
        specs = [_spec(m) for m in methods]
        values = [v for v in leaders for _ in methods]
        found, _ = observe(model, values, specs * len(leaders), data, Progress("choose-ranges", None, enabled=False))
        return {v: dict(zip(methods, found[i * len(methods):(i + 1) * len(methods)])) for i, v in enumerate(leaders)}

    def _try(self, value: ir.Value, candidates: dict[str, Observer], followers: list[ir.Value],
             evaluator: Evaluator, best: float, start: float) -> tuple[str, float] | None:
        """Rule 4 for one value: the candidate whose variant beats `best` most, applied; None when none does."""
        kept = None
        current = (value.observed_range, value.meta.get("observer_state"))
        for method, observer in candidates.items():
            lo, hi = observer.range()
            candidate = (float(lo), float(hi))
            if candidate == current[0] or time.perf_counter() - start >= self.options.time_budget_s:
                continue
            _apply(value, followers, candidate, observer)
            sqnr = evaluator.measure({}).min_sqnr_db
            if sqnr > best:
                best, kept, current = sqnr, (method, sqnr), (candidate, observer)
        _apply(value, followers, *current)
        return kept


def _spec(method: str) -> tuple:
    """The observer spec a `methods` entry names: minmax, percentile-P, mse or entropy."""
    name, _, percentile = method.partition("-")
    try:
        if name == "percentile" and percentile:
            return ObserverOptions(method="percentile", percentile=float(percentile)).spec()
        if name in ("minmax", *_HISTOGRAM_METHODS) and not percentile:
            return ObserverOptions(method=name).spec()
    except ValueError as err:
        raise PassError(f"choose-ranges{{methods=...}}: {method!r}: {err}") from None
    raise PassError(f"choose-ranges{{methods=...}} takes minmax, percentile-P (P in (0, 100]), mse or entropy, "
                    f"not {method!r}")


def _followers(model: ir.Model) -> dict[ir.Value, list[ir.Value]]:
    found: dict[ir.Value, list[ir.Value]] = {}
    for value, leader in quantized_values(model).items():
        if value is not leader:
            found.setdefault(leader, []).append(value)
    return found


def _apply(value: ir.Value, followers: list[ir.Value], observed_range, observer) -> None:
    """Rule 6: the leader's range, and its followers'."""
    value.observed_range = observed_range
    value.meta["observer_state"] = observer
    for follower in followers:
        follower.observed_range = observed_range


def _ranked(model: ir.Model, leaders: list[ir.Value], feeds: list[dict]) -> list[ir.Value]:
    """Rule 3: worst own rounding error (lowest SQNR) first."""
    sums = {v: ErrorSums(v.name) for v in leaders}
    params = {v: QuantParams.from_range(*v.observed_range, DType.UINT8, symmetric=False) for v in leaders}
    for arrays in tapped_batches(model, leaders, feeds, Progress("", None, enabled=False)):
        for value, x in zip(leaders, arrays):
            x = np.asarray(x, dtype=np.float32)
            sums[value].add(x, dequantize(quantize(x, params[value]), params[value]))
    return sorted(leaders, key=lambda v: sums[v].metrics().sqnr_db)


def _number(value: float) -> float | str:
    return round(value, 3) if math.isfinite(value) else str(value)
