"""legalize-opset: bring a model below opset 13 up to 13, checked to compute the same.

Per-channel DequantizeLinear (an axis) needs opset 13, and exporters such as
paddle2onnx still write 11 or 12. The conversion is ONNX's version converter
(`ir.convert_opset`), which checks the converted model against the original on a feed:
the first feed of the calibration data when there is data (a model with dynamic spatial
dims may not run on the converter's small random inputs). A model at 13 or above is
left alone. The converted graph replaces the model's; value names survive, value
objects do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler import ir

from ..infra.base import Pass, register_pass


@register_pass
class LegalizeOpset(Pass):
    """Convert a model below `opset` to it (13: per-channel DequantizeLinear), checked on a data feed."""

    name = "legalize-opset"

    @dataclass
    class Options:
        """opset: the lowest opset the model leaves with."""

        opset: int = 13

    def run(self, model: ir.Model, ctx) -> bool:
        before = model.opset
        if before >= self.options.opset:
            return False
        converted = ir.load_model(ir.convert_opset(ir.to_onnx(model), self.options.opset, feeds=ctx.first_feed))
        model.graph, model.opset_imports, model.ir_version = converted.graph, converted.opset_imports, converted.ir_version
        ctx.note_setting("opset", f"{before} -> {model.opset}: per-channel DequantizeLinear needs 13 (outputs checked)")
        self.stats["converted"] += 1
        return True
