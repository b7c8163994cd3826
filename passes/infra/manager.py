"""The pass manager: runs a pipeline over a model, calling the context's instruments."""

from __future__ import annotations

from dataclasses import dataclass, field

from qcompiler import ir

from .base import Pass, PassCrash, PassError, about_the_input
from .context import PassContext
from .contracts import check_order
from .instruments import PassEvent
from .pipeline import NamedPipeline, PassStep, Pipeline, Repeat, parse_pipeline


@dataclass
class PassResult:
    """What a pipeline run did: whether anything changed, and which passes ran in order."""

    changed: bool
    ran: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class PassManager:
    """Run `pipeline` (text or parsed) over models.

        pm = PassManager("canonicalize,fuse{patterns=conv-bn},cleanup")
        result = pm.run(model, PassContext(instruments=[Timing()]))
    """

    def __init__(self, pipeline: str | Pipeline) -> None:
        self.pipeline = parse_pipeline(pipeline) if isinstance(pipeline, str) else pipeline

    def __str__(self) -> str:
        return str(self.pipeline)

    def run(self, model: ir.Model, ctx: PassContext | None = None) -> PassResult:
        ctx = ctx if ctx is not None else PassContext()
        check_order(self.pipeline, model, overrides=bool(ctx.overrides))  # a misordered pipeline fails before any pass runs
        result = PassResult(changed=False)
        try:
            steps = self.pipeline.steps
            for position, step in enumerate(steps):
                result.changed |= self._run_step(step, model, ctx, result, steps[position + 1:])
        finally:
            for instrument in ctx.instruments:
                instrument.finish(ctx)
        return result

    def _run_step(self, step, model: ir.Model, ctx: PassContext, result: PassResult, after: list) -> bool:
        """Run `step`; `after` lists the steps that follow it, named pipelines and repeat groups unfolded."""
        if isinstance(step, NamedPipeline):
            return any([self._run_step(s, model, ctx, result, [*step.body[i + 1:], *after])
                        for i, s in enumerate(step.body)])
        if isinstance(step, Repeat):
            changed = False
            for _ in range(step.max_iterations):
                round_changed = any([self._run_step(s, model, ctx, result, [*step.body[i + 1:], *after])
                                     for i, s in enumerate(step.body)])
                changed |= round_changed
                if not round_changed:
                    return changed
            result.warnings.append(f"{step} still changed the model after {step.max_iterations} iterations")
            return changed
        ctx.following = ",".join(map(str, after))
        return self._run_pass(step, model, ctx, result, ",".join(map(str, [step, *after])))

    def _run_pass(self, step: PassStep, model: ir.Model, ctx: PassContext, result: PassResult, remaining: str) -> bool:
        pass_: Pass = step.instantiate(self.pipeline.text)
        event = PassEvent(pass_, len(result.ran) + 1, str(self.pipeline), remaining)
        try:
            pass_.requires(model, ctx)  # an unmet precondition is the caller's to fix: no reproducer
        except PassError as error:
            raise PassError(f"pass {pass_.name!r} ({event.index}) cannot run: {error}") from None
        for instrument in ctx.instruments:
            instrument.before_pass(model, event, ctx)
        try:
            changed = bool(pass_.run(model, ctx))
            if changed:
                ctx.analyses.clear()  # computed on the model as it was
        except Exception as error:
            notes = [n for n in (i.on_error(error, event, ctx) for i in ctx.instruments) if n]
            already = ", ".join(result.ran) or "none"
            kind = "" if isinstance(error, PassError) else f"{type(error).__name__}: "  # a PassError speaks for itself
            message = f"pass {pass_.name!r} ({event.index}) failed: {kind}{error} [passes already run: {already}]"
            raise (PassError if about_the_input(error) else PassCrash)("; ".join([message, *notes])) from error
        result.ran.append(pass_.name)
        for instrument in ctx.instruments:
            instrument.after_pass(model, event, ctx, changed)
        return changed
