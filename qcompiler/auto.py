"""auto(): walk the quantization ladder, measure every rung, keep the fastest that stays within a tolerance.

1. The tolerance is how much accuracy may go. With a metric function (`FILE.py:fn`,
   called on a dict {output name: that output over every evaluation row, in data order},
   higher is better; labels are the function's business) the metric may fall at most
   `tolerance` below the float model's, in the metric's own units. Without one, each
   output is judged in percent by the measure that fits it (qcompiler/acceptance.py,
   read from the float graph): top-1 agreement for classifier scores, argmax agreement
   per position for per-position class scores (CTC, segmentation), agreement of the
   thresholded decision (and a relative-error guard) for probabilities and score maps,
   mean cosine for embeddings, hidden states and feature maps; agreement >= 100 -
   tolerance %, cosine >= 1 - tolerance / 100. Each attempt lists every output's figure.
   Top-1 agreement counts rows: on fewer than 100 / tolerance evaluation rows a single
   disagreement is over the tolerance, and the summary says how many rows would allow one.
2. The rungs, cheapest to compile first: `dynamic` (weights int8 offline, activations
   quantized at run time, no calibration), `dynamic-smooth` (smooth-quant, then dynamic),
   `static` (int8, min-max observers), `static-percentile` (percentile 99.99 observers:
   the observer choice), `static-smooth` (smooth-quant first; the smooth rungs only when
   a LayerNorm feeds a MatMul or Gemm, where activation outliers live), `static-equalized`
   (equalize and bias-correct, on nets with a Conv). With `search=True`, and only when none
   of those meets the tolerance, the searching rungs, each all int8 and as fast as
   `static`, but searching on the calibration data: `static-ranges` (choose-ranges: an
   activation range per value, kept where the outputs gain) and `static-adaround`
   (adaround: each weight's rounding learned against its layer's output), the walk ending
   at the first that meets. They are not on by default: on the golden cases they rescued
   none that the cheap rungs lost, at minutes each where the cheap rungs take seconds.
   Only when none of those meets either, `mixed`
   (assign-precision promotes the most sensitive layers until the budget holds: the
   metric's budget of rule 1, else SQNR budgets 6 and 12 dB above the best rung so far
   that quantizes most of the compute, each checked by the task measures). A rung that leaves less than half of the
   compute quantized is rejected: that is the float model with extra steps (dynamic on
   a conv net, which it leaves float; a mixed rung that promoted most layers). The share
   is assign-precision's int8 work when it ran, else the MACs ORT runs in integer
   kernels. A rung that fails to compile is reported with its error and the walk goes on.
3. Every rung is a full `compile()`: its accuracy comes from the validation on the
   evaluation data, its speed from the latency ratio quantized / float that compile
   measured interleaved with the float model (a ratio, so machine noise between rungs
   cancels), its size from the written bytes. Rungs run one after another, never side by
   side on an executor: each measures latency, which rungs sharing the cores would skew;
   `executor` is where each rung's passes run the work they split. Among the rungs that meet the tolerance
   the lowest latency ratio wins; within 5% of it the smaller model. A winner slower
   than float is kept for its size, with that said in its verdict.
4. When nothing meets the tolerance the float model is kept, said so, with the best rung
   reached and a pointer to quantization-aware training (`qcompiler.qat.prepare_qat`).
   `require=True` makes that an error (`AutoError`); the CLI exits 1 then, else 0.
5. Time: the walk has a budget (`time_budget_s`, default 10 minutes, what a 2-core
   machine gives a BERT-base). Before each rung after the first, its cost is estimated
   from the rungs already run: a static or dynamic rung costs what the slowest of its
   kind did; a searching rung what the slowest static one did plus its search, whose own
   `time_budget_s` the walk sets to a quarter of what that leaves (at most the pass's
   default), so that a mixed rung after them keeps most of the budget; a mixed rung about one validation per sensitivity run, two per compute op
   (sensitivity.py: each unit alone, then promotion and lowering). A rung whose estimate
   does not fit in what is left is skipped, said so in its verdict, and the best rung so
   far is kept; the summary says how much of the budget went.
6. The rungs share one `Observations` store (passes/analyses/observers.py): the fused
   model is calibrated once, its min-max pass also feeding the percentile rung's
   observers, smooth-quant's channel maxima are measured once for both smooth rungs,
   and the mixed rungs reuse the static rung's observers.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcompiler import ir, passes
from qcompiler.acceptance import floor, holds, measures
from qcompiler.compiler import CompileResult, as_executor, compile, load_for_compile, transformer_layers
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.ir.evaluate import ValueTap, joined, outputs_over
from qcompiler.passes.analyses.cost import COMPUTE_OPS
from qcompiler.passes.analyses.observers import ObserverOptions, Observations
from qcompiler.passes.transforms.assign_precision import BudgetUnreachable
from qcompiler.passes.infra.plugins import load_function
from qcompiler.recipe import Recipe

_LATENCY_TIE = 0.05
_MIN_INT8_WORK = 0.5
_MIXED_SQNR_STEPS_DB = (6.0, 12.0)
_OUT_OF_REACH = "rejected: out of reach: "
_OVER_BUDGET = "skipped: over the time budget: "
DEFAULT_TIME_BUDGET_S = 600.0
_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s?)?")
_SEARCH_SHARE = 0.25  # rule 5: of the time left, what a searching rung may spend on its search
_RUNS_PER_COMPUTE_OP = 2  # rule 5: a mixed rung's sensitivity runs per Conv/MatMul/Gemm


class AutoError(Exception):
    """`require=True` and no rung met the tolerance."""


@dataclass(frozen=True)
class Rung:
    """One way to quantize: a pipeline and recipe settings on top of the user's recipe."""

    name: str
    pipeline: str
    passes: dict[str, dict[str, Any]] = field(default_factory=dict)
    needs_calibration: bool = True
    searches: str | None = None  # the pass whose time_budget_s the walk sets from what is left (rule 5)


@dataclass
class Attempt:
    """What one rung measured and why it was kept or rejected."""

    rung: str
    pipeline: str
    accuracy: str = ""
    latency_ratio: float | None = None
    size_ratio: float | None = None
    compile_seconds: float = 0.0
    seconds: float = 0.0  # wall time of the whole attempt: compile, validation and benchmark
    meets: bool = False
    metric: float | None = None  # the --metric function's value, when one judges
    verdict: str = ""
    result: CompileResult | None = None


@dataclass
class AutoResult:
    """The rung kept (None: the float model is kept) and every attempt, in the order tried."""

    tolerance: str
    attempts: list[Attempt]
    chosen: Attempt | None
    float_model: ir.Model
    time_budget_s: float = DEFAULT_TIME_BUDGET_S
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> ir.Model:
        return self.chosen.result.model if self.chosen is not None else self.float_model

    def to_dict(self) -> dict[str, Any]:
        """What `--report` writes: the tolerance, every attempt, and the chosen rung's compile report."""
        return {
            "tolerance": self.tolerance,
            "time_budget_s": self.time_budget_s, "seconds": round(self.seconds, 2),
            "chosen": self.chosen.rung if self.chosen is not None else None,
            "attempts": [{key: getattr(a, key) for key in ("rung", "pipeline", "accuracy", "latency_ratio", "size_ratio",
                                                          "compile_seconds", "seconds", "meets", "metric", "verdict")}
                         for a in self.attempts],
            "report": self.chosen.result.report.to_dict() if self.chosen is not None else None,
            "notes": self.notes,
        }

    def summary(self) -> list[str]:
        lines = [f"auto: tolerance {self.tolerance}; {duration_text(self.seconds)} of a "
                 f"{duration_text(self.time_budget_s)} time budget"]
        width = max(len(a.rung) for a in self.attempts)
        for a in self.attempts:
            latency = f"{a.latency_ratio:.2f}x" if a.latency_ratio is not None else "-"
            size = f"{a.size_ratio:.0%}" if a.size_ratio is not None else "-"
            figures = a.accuracy.split("; ") if a.accuracy else ["-"]
            inline = figures[0] if len(figures) == 1 else ""  # several outputs: one line each, below
            lines.append(f"  {a.rung:<{width}}  {inline:<34} latency {latency:>6}  size {size:>4}  {a.verdict}")
            lines.extend(f"  {'':<{width}}    {figure}" for figure in figures if not inline)
        lines.extend(f"  note: {note}" for note in self.notes)
        if any(a.verdict.startswith(_OVER_BUDGET) for a in self.attempts):
            lines.append("  the time budget ran out: the best rung tried is kept (--time-budget gives more)")
        if self.chosen is None:
            lines.append("  kept the float model: no rung met the tolerance; quantization-aware training "
                         "(qcompiler.qat.prepare_qat) can recover accuracy post-training quantization loses")
        else:
            lines.append(f"  chose {self.chosen.rung}: {self.chosen.pipeline}")
        return lines


def ladder(model: ir.Model) -> list[Rung]:
    """Rule 2's cheap rungs for `model`; `mixed` is added by auto() only when they all fail."""
    normalized = transformer_layers(model)
    rungs = [Rung("dynamic", "dynamic", needs_calibration=False)]
    if normalized:
        rungs.append(Rung("dynamic-smooth", "dynamic-smooth"))
    rungs += [Rung("static", "int8"),
              Rung("static-percentile", "int8", {"insert-observers": {"method": "percentile", "percentile": 99.99}})]
    if normalized:
        rungs.append(Rung("static-smooth", "int8-smooth"))
    if any(node.op_type == "Conv" for node in model.graph.nodes):
        rungs.append(Rung("static-equalized", "int8-equalized"))
    return rungs


SEARCH_RUNGS = (Rung("static-ranges", "int8-ranges", searches="choose-ranges"),
                Rung("static-adaround", "int8-adaround", searches="adaround"))  # rule 2, cheapest first


def auto(model: Any, calib: Any, *, tolerance: float, eval: Any = None, metric: str | Callable | None = None,
         recipe: Recipe | None = None, require: bool = False, example_inputs: Any = None,
         dynamic_shapes: Any = None, log: Callable[[str], None] | None = None,
         time_budget_s: float = DEFAULT_TIME_BUDGET_S, executor: str | passes.Executor | None = None,
         search: bool = False) -> AutoResult:
    """Rules 1-5 of the module: try each rung on `model`, keep the fastest within `tolerance`; `executor`
    is compile()'s, where the passes of each rung run split work; `search` adds the searching rungs."""
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, not {tolerance}")
    if not time_budget_s > 0:
        raise ValueError(f"the time budget must be > 0 seconds, not {time_budget_s}")
    start = time.perf_counter()
    say = log or (lambda message: None)
    executor = as_executor(executor)  # a missing ray is one error, not a failure in every rung
    float_model = load_for_compile(model, example_inputs, dynamic_shapes)
    judge = _Judge(float_model, eval if eval is not None else calib, tolerance, metric)
    compute_ops = sum(1 for node in float_model.graph.nodes if not node.domain and node.op_type in COMPUTE_OPS)
    rungs = ladder(float_model)
    observations = shared_observations(rungs)
    attempts: list[Attempt] = []

    def walk(rung: Rung) -> Attempt:
        left = time_budget_s - (time.perf_counter() - start)
        rung = bounded(rung, attempts, left)
        estimate = estimate_seconds(rung, attempts, compute_ops)
        if attempts and estimate is not None and estimate > left:
            attempt = Attempt(rung.name, rung.pipeline, verdict=f"{_OVER_BUDGET}estimated {duration_text(estimate)}, "
                              f"{duration_text(max(left, 0))} of the budget left")
        else:
            guess = "" if estimate is None else f", about {duration_text(estimate)}"
            say(f"auto: trying {rung.name} ({duration_text(max(left, 0))} of the time budget left{guess})")
            attempt = _attempt(rung, float_model, calib, eval, recipe, judge, observations, executor)
        attempts.append(attempt)
        return attempt

    for rung in rungs:
        walk(rung)
    for rung in SEARCH_RUNGS if search and not any(a.meets for a in attempts) else ():
        if walk(rung).meets:
            break
    if not any(a.meets for a in attempts):
        for rung in _mixed_rungs(judge, attempts):
            attempt = walk(rung)
            if attempt.meets or attempt.verdict.startswith((_OUT_OF_REACH, _OVER_BUDGET)):
                break  # a higher budget is further out of reach, and costs as much
    chosen = _choose(attempts)
    result = AutoResult(judge.describe(), attempts, chosen, float_model, time_budget_s,
                        time.perf_counter() - start, judge.coarse(attempts))
    if chosen is None and require:
        raise AutoError("no rung met the tolerance (" + judge.describe() + "); " +
                        "; ".join(f"{a.rung}: {a.verdict}" for a in attempts))
    return result


def shared_observations(rungs: list[Rung]) -> Observations:
    """Rule 6's store: the rungs' observers other than the default fed beside it, in its pass over the data."""
    default = ObserverOptions().spec()
    others = {ObserverOptions(**rung.passes["insert-observers"]).spec() for rung in rungs
              if "insert-observers" in rung.passes}
    return Observations({default: tuple(sorted(others - {default}))})


def _attempt(rung: Rung, float_model: ir.Model, calib: Any, eval: Any, recipe: Recipe | None,
             judge: _Judge, observations: Observations, executor: str | passes.Executor | None) -> Attempt:
    attempt = Attempt(rung.name, rung.pipeline)
    if rung.needs_calibration and calib is None:
        attempt.verdict = "skipped: needs calibration data"
        return attempt
    start = time.perf_counter()
    try:
        result = compile(ir.clone_model(float_model), calib if rung.needs_calibration else None,
                         recipe=_with_passes(recipe, rung.passes), pipeline=rung.pipeline,
                         eval=eval if eval is not None else calib, observations=observations,
                         executor=executor)
    except Exception as err:  # a rung that cannot compile this model is a finding, not the end of the walk
        attempt.seconds = time.perf_counter() - start
        if isinstance(err.__cause__, BudgetUnreachable):
            attempt.verdict = f"{_OUT_OF_REACH}{err.__cause__}"
        else:
            attempt.verdict = f"failed: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
        return attempt
    report = result.report
    attempt.seconds = time.perf_counter() - start
    attempt.result, attempt.pipeline = result, report.pipeline
    attempt.compile_seconds = report.compile_seconds
    attempt.latency_ratio = report.latency.ratio if report.latency is not None else None
    attempt.size_ratio = report.size_bytes["quantized"] / max(report.size_bytes["float"], 1)
    attempt.meets, attempt.accuracy, shortfall, attempt.metric = judge.judge(result)
    share = _quantized_share(report)
    if attempt.meets and share < _MIN_INT8_WORK:
        attempt.meets, shortfall = False, (f"only {share:.0%} of the compute is quantized: the float model "
                                           "with extra steps")
    attempt.verdict = "meets the tolerance" if attempt.meets else f"rejected: {shortfall}"
    return attempt


def bounded(rung: Rung, attempts: list[Attempt], left: float) -> Rung:
    """Rule 5: a searching rung with its search's time budget set from the `left` seconds; others as they are."""
    if rung.searches is None:
        return rung
    default = passes.get_pass(rung.searches).Options().time_budget_s
    search = min(default, max(left - _slowest_static(attempts), 0.0) * _SEARCH_SHARE)
    options = {**rung.passes.get(rung.searches, {}), "time_budget_s": round(search, 1)}
    return dataclasses.replace(rung, passes={**rung.passes, rung.searches: options})


def estimate_seconds(rung: Rung, attempts: list[Attempt], compute_ops: int) -> float | None:
    """Rule 5: the seconds `rung` should take, judged from the attempts so far (None: nothing to go by)."""
    if rung.searches is not None:
        search = rung.passes.get(rung.searches, {}).get("time_budget_s",
                                                        passes.get_pass(rung.searches).Options().time_budget_s)
        return _slowest_static(attempts) + search
    if rung.pipeline == "mixed":
        static = _static(attempts)
        if not static:
            return None
        validation = max(a.seconds - a.compile_seconds for a in static)  # one evaluation of both models
        return max(a.seconds for a in static) + _RUNS_PER_COMPUTE_OP * compute_ops * validation
    ran = [a for a in attempts if a.result is not None]
    alike = [a.seconds for a in ran if (a.rung.startswith("dynamic") == rung.name.startswith("dynamic"))]
    return max(alike or [a.seconds for a in ran], default=None)


def _static(attempts: list[Attempt]) -> list[Attempt]:
    """The static rungs that ran, searching ones aside: what one calibrated compile and validation take."""
    searching = {rung.name for rung in SEARCH_RUNGS}
    return [a for a in attempts if a.result is not None and a.rung.startswith("static") and a.rung not in searching]


def _slowest_static(attempts: list[Attempt]) -> float:
    return max((a.seconds for a in _static(attempts)), default=0.0)


def duration_text(seconds: float) -> str:
    """Seconds as people read a duration: 42 s, 3m05s, 1h02m."""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def parse_duration(text: str) -> float:
    """`10m`, `90s`, `1h`, `1h30m` or plain seconds, as seconds; ValueError names what it could not read."""
    match = _DURATION.fullmatch(text.strip())
    if not match or not any(match.groups()):
        raise ValueError(f"cannot read {text!r} as a duration: write e.g. 10m, 90s, 1h30m or a number of seconds")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise ValueError(f"a duration must be longer than 0, not {text!r}")
    return total


def _quantized_share(report) -> float:
    """The share of MACs left int8: assign-precision's count when it ran, else the integer kernels ORT chose."""
    if report.precision is not None:
        return report.precision["int8_work_share"]
    return report.kernels.integer_share if report.kernels is not None else 1.0


def _choose(attempts: list[Attempt]) -> Attempt | None:
    """Rule 3: the lowest latency ratio among those that meet; near-ties to the smaller model."""
    meeting = [a for a in attempts if a.meets and a.latency_ratio is not None]
    if not meeting:
        return None
    fastest = min(a.latency_ratio for a in meeting)
    close = [a for a in meeting if a.latency_ratio <= fastest * (1 + _LATENCY_TIE)]
    chosen = min(close, key=lambda a: (a.size_ratio, a.latency_ratio))
    for a in meeting:
        a.verdict = ("kept: the fastest that meets the tolerance" if a is chosen else
                     f"meets, but {a.latency_ratio / chosen.latency_ratio:.2f}x the latency of {chosen.rung}"
                     if a not in close else f"meets, as fast as {chosen.rung} within {_LATENCY_TIE:.0%}: "
                     "the smaller one (then the faster) is kept")
    if round(chosen.latency_ratio, 1) > 1.0:
        chosen.verdict += (f"; but {chosen.latency_ratio:.1f}x slower than float here: it only saves size, keep "
                           "the float model if speed matters")
    return chosen


def _mixed_rungs(judge: _Judge, attempts: list[Attempt]) -> list[Rung]:
    """Rule 2's mixed rung: the metric's budget, or escalating SQNR budgets checked by the task measures."""
    if judge.metric_reference is not None:
        return [Rung("mixed", "mixed", {"assign-precision": {"metric": judge.metric_reference,
                                                             "max_drop": judge.tolerance}})]
    quantized = [a for a in attempts if a.result is not None and _quantized_share(a.result.report) >= _MIN_INT8_WORK]
    best = max((min(m.sqnr_db for m in a.result.report.outputs) for a in quantized), default=20.0)
    return [Rung(f"mixed+{step:g}dB", "mixed", {"assign-precision": {"min_sqnr_db": round(best + step, 2)}})
            for step in _MIXED_SQNR_STEPS_DB]


class _Judge:
    """Rule 1: whether a compiled model's outputs stay within the tolerance."""

    def __init__(self, float_model: ir.Model, data: Any, tolerance: float, metric: str | Callable | None) -> None:
        self.tolerance = tolerance
        self.metric_reference = metric if isinstance(metric, str) else None
        self.metric = load_function(metric, "metric") if isinstance(metric, str) else metric
        self.data = open_calibration_data(data, input_specs(float_model)) if self.metric is not None else None
        self.float_metric = self.metric(self._outputs(float_model)) if self.metric is not None else None
        self.measures = measures(float_model)

    def describe(self) -> str:
        if self.metric is not None:
            return f"{self.tolerance:g} below the float model's metric {self.float_metric:.4g}"
        bound = floor(self.tolerance)
        parts = dict.fromkeys(f"{m.describe()} >= {bound:g}" if m.kind == "cosine" else
                              f"{m.describe()} >= {100 * bound:g}%" for m in self.measures.values())
        return f"{self.tolerance:g}% ({', '.join(parts)})"

    def judge(self, result: CompileResult) -> tuple[bool, str, str, float | None]:
        """(meets, the accuracy figure per output, what fell short, the metric function's value if any)."""
        if self.metric is not None:
            value = self.metric(self._outputs(result.model))
            drop = self.float_metric - value
            figure = f"metric {value:.4g} (drop {drop:.3g})"
            return drop <= self.tolerance, figure, f"metric drop {drop:.3g} > {self.tolerance:g}", value
        figures, short = [], []
        for m in result.report.outputs:
            if m.measure_value is None:
                short.append(f"{m.name}: no task measure was recorded")
                continue
            measure = self.measures[m.name]
            figures.append(f"{m.name}: {measure.text(m.measure_value)}")
            meets, why = holds(measure, m.measure_value, m.sqnr_db, self.tolerance)
            if not meets:
                short.append(f"{m.name}: {why}")
            if m.nonfinite:
                short.append(f"{m.name}: {m.nonfinite} NaN/Inf values")
        return not short, "; ".join(figures), "; ".join(short), None

    def coarse(self, attempts: list[Attempt]) -> list[str]:
        """Rule 1's last sentence: the outputs judged by top-1 agreement on too few rows for the tolerance."""
        report = next((a.result.report for a in attempts if a.result is not None), None)
        if self.metric is not None or report is None:
            return []
        enough = math.ceil(100 / self.tolerance)
        return [f"{m.name}: top-1 agreement over {m.samples} rows, so one disagreement ({100 / m.samples:.1f}%) "
                f"is over the {self.tolerance:g}% tolerance; {enough} evaluation rows would allow one"
                for m in report.outputs if m.name in self.measures and self.measures[m.name].kind == "top1"
                and m.samples < enough]

    def _outputs(self, model: ir.Model) -> dict[str, np.ndarray | list[np.ndarray]]:
        return joined(outputs_over(ValueTap(model, model.graph.outputs), list(self.data)))


def _with_passes(recipe: Recipe | None, options: dict[str, dict[str, Any]]) -> Recipe:
    """`recipe` (or none) with the rung's pass options added, as recipe TOML values would be."""
    merged = Recipe.from_dict({"passes": options}) if options else Recipe()
    if recipe is None:
        return merged
    combined = dataclasses.replace(recipe, pass_options=dict(recipe.pass_options))
    for name, values in merged.pass_options.items():
        combined.pass_options[name] = {**combined.pass_options.get(name, {}), **values}
    return combined


def save_auto(result: AutoResult, path: str | Path) -> None:
    """The chosen model, or the float model unchanged when nothing met the tolerance."""
    ir.save_model(result.model, path)
