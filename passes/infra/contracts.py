"""Facts: what a pass needs to be true of the model, and what it makes true, checked over a
whole pipeline before any pass runs.

A misordered pipeline would otherwise fail late or, worse, quietly: fold-weights before
place-qdq leaves the biases float, place-qdq before calibrate raises after it has inserted
pairs. Each pass declares `needs`, `gives`, `breaks` and `refuses` (names from FACTS); the manager
walks the pipeline in order and refuses it, with the column of the pass, when a fact a
pass needs is neither given by an earlier pass nor already true of the model, or an
earlier pass already gave a fact it must run before. Each fact can be seen on
the IR, so a model that arrives calibrated (a dump read back, a .qir test) satisfies
`calibrated` without calibrate in the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from qcompiler import ir

from .base import PipelineError, get_pass, registered_passes
from .pipeline import NamedPipeline, PassStep, Pipeline, Repeat


def _observed(model: ir.Model) -> bool:
    return any("observer" in v.meta or "observer_follows" in v.meta for v in model.graph.all_values())


def _calibrated(model: ir.Model) -> bool:
    """Every value marked for observing has its range (so, vacuously, a model with nothing to observe)."""
    return all(v.observed_range is not None for v in model.graph.all_values() if "observer" in v.meta)


def _qdq_placed(model: ir.Model) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.all_nodes())


def _weights_folded(model: ir.Model) -> bool:
    """Float weights stored as integer codes behind a DequantizeLinear (fold-weights' output)."""
    return any(n.op_type == "DequantizeLinear" and n.inputs[0] is not None and n.inputs[0].is_const
               for n in model.graph.all_nodes())


# fact -> (how to see it on a model, what it means)
FACTS: dict[str, tuple[Callable[[ir.Model], bool], str]] = {
    "observed": (_observed, "values to calibrate are marked with their observers"),
    "calibrated": (_calibrated, "every observed value carries its measured range"),
    "qdq-placed": (_qdq_placed, "Q/DQ pairs stand where the rules quantize"),
    "weights-folded": (_weights_folded, "weights are stored as integer codes and biases as int32"),
}


def check_order(pipeline: Pipeline, model: ir.Model, overrides: bool = False) -> None:
    """Raise PipelineError at the first pass whose needs neither the model nor an earlier pass meet;
    with `overrides` (the context carries some) also when no apply-overrides would apply them."""
    steps = list(_passes(pipeline.steps, None))
    if overrides and not any(step.name == "apply-overrides" for step, _ in steps):
        raise PipelineError(pipeline.text, 1, "the recipe has overrides, but no apply-overrides step in the "
                            "pipeline applies them: start the pipeline with apply-overrides")
    needed = set().union(*(get_pass(step.name).needs for step, _ in steps))
    have = {fact for fact in needed if FACTS[fact][0](model)}  # only `needs` look at the model
    given: set[str] = set()  # by passes of this pipeline: a model may arrive holding Q/DQ and folded weights
    for step, column in steps:
        cls = get_pass(step.name)
        missing = sorted(cls.needs - have)
        if missing:
            fact = missing[0]
            raise PipelineError(pipeline.text, column,
                                f"{step.name} needs the model {fact} ({FACTS[fact][1]}), which no earlier pass "
                                f"provides and the model is not; {_givers(fact)} provides it: run it before "
                                f"{step.name}")
        early = sorted(cls.refuses & given)
        if early:
            fact = early[0]
            raise PipelineError(pipeline.text, column,
                                f"{step.name} must run before the model is {fact} ({FACTS[fact][1]}), but an "
                                f"earlier {_givers(fact)} already made it so: run {step.name} first")
        have = (have - cls.breaks) | cls.gives
        given = (given - cls.breaks) | cls.gives


def _givers(fact: str) -> str:
    return " or ".join(sorted(name for name, cls in registered_passes().items() if fact in cls.gives))


def _passes(steps: list, named_column: int | None) -> Iterator[tuple[PassStep, int]]:
    """Every pass step in running order with the column to point at (a named pipeline's own)."""
    for step in steps:
        if isinstance(step, PassStep):
            yield step, named_column if named_column is not None else step.column
        elif isinstance(step, Repeat):
            yield from _passes(step.body, named_column)
        elif isinstance(step, NamedPipeline):
            yield from _passes(step.body, named_column if named_column is not None else step.column)
