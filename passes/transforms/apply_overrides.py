"""apply-overrides: write the recipe's per-node settings onto the nodes they name.

1. Each node gets the marks `ctx.overrides.node_marks` gives it (overrides.py):
   `quantize` (false for `exclude`, true for `force`), `activations`, `precision`,
   `weight_scheme` and `algorithms`. Every quantizing pass (static, dynamic, weight-only, fp16) reads
   them from the node, dumps show them, and a hand-edited dump can carry its own.
2. A mark the overrides do not set is left as it is (a dump read back keeps its marks).
3. `exclude`, `force` and `by_node` must name nodes the model has (by_node may name a
   graph input, for its observer): a misspelt name fails instead of doing nothing. So
   must an algorithm an `algorithms` setting names be one the rest of the pipeline runs.

    %c = Conv(%x, %w) name="head"       =>    %c = Conv(%x, %w) name="head" meta{quantize=false}
"""

from __future__ import annotations

from qcompiler import ir

from ..infra.base import Pass, PassError, register_pass
from ..infra.pipeline import parse_pipeline


@register_pass
class ApplyOverrides(Pass):
    """Mark the nodes the recipe's overrides name: quantize, activations, precision, weight scheme, algorithms."""

    name = "apply-overrides"
    writes = frozenset({"quantize", "activations", "precision", "weight_scheme", "algorithms"})

    def requires(self, model: ir.Model, ctx) -> None:
        overrides = ctx.overrides
        nodes = {n.name for n in model.graph.nodes if n.name}
        inputs = {v.name for v in model.graph.inputs}
        for key, names, known in (("exclude", overrides.exclude, nodes), ("force", overrides.force, nodes),
                                  ("node", overrides.by_node, nodes | inputs)):
            missing = sorted(set(names) - known)
            if missing:
                raise PassError(f"[overrides] {key} names {missing}, which the model does not have")
        running = parse_pipeline(ctx.following).pass_names() if ctx.following else set()
        for algorithm, section in overrides.algorithms().items():
            if algorithm not in running:
                raise PassError(f"{section} algorithms names {algorithm}, which the pipeline does not run "
                                f"after apply-overrides: add it, or pick a pipeline that has it")

    def run(self, model: ir.Model, ctx) -> bool:
        changed = False
        for node in model.graph.nodes:
            marks = ctx.overrides.node_marks(node)
            if any(node.meta.get(key) != value for key, value in marks.items()):
                node.meta.update(marks)
                self.stats["nodes"] += 1
                changed = True
        return changed
