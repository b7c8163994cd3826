"""freeze-weight-inputs: initializers listed as graph inputs become plain constants.

Older exporters (IR version 3, some paddle2onnx and tf2onnx files) list every weight as
a graph input with a default. The rules quantize constants as weights and treat inputs
as activations, so until frozen such a model quantizes nothing as a weight. Nobody
feeds a weight at run time: the frozen inputs are no longer inputs of the model.

    graph @g(%x, %w = [..]) { %y = MatMul(%x, %w) }   =>   graph @g(%x) { const %w = [..]; %y = MatMul(%x, %w) }
"""

from __future__ import annotations

from qcompiler import ir

from ..infra.base import Pass, register_pass


@register_pass
class FreezeWeightInputs(Pass):
    """Make initializers listed as graph inputs constants, so they are quantized as the weights they are."""

    name = "freeze-weight-inputs"

    def run(self, model: ir.Model, ctx) -> bool:
        defaults = [v for v in model.graph.inputs if v.const is not None]
        for value in defaults:
            model.graph.freeze_input(value)
        self.stats["frozen"] += len(defaults)
        if defaults:
            ctx.note_setting("weight inputs", f"{len(defaults)} initializers listed as graph inputs are treated as "
                             "constants (no longer inputs of the quantized model)")
        return bool(defaults)
