"""quantize-embeddings: store embedding tables as blockwise uint8 (or int4) codes, looked up by ONNX Runtime.

A transformer's word-embedding table is often its largest tensor (30522 x 768 float is
94 MB of BERT-base's 435) and is only ever read one row per token, so it stores well in
8 bits whatever the rest of the model does: every quantizing pipeline runs this pass.

1. A table is the data input of a Gather (default domain) that is a 2-D float32
   initializer of at least `min_size` elements (default 4096: a token-type table of 2
   rows stays float) whose indices are computed, not constant (a constant Gather is
   folded, not looked up). Nodes an override keeps float (rules.float_by_choice) keep
   float tables.
2. Codes per block of `block_size` along the hidden axis (weight_quant.blocked_params;
   default 128, a power of two >= 16 as the op requires), each block's [min, max]:
   uint8 with a zero point per block, or with `bits=4` int4 with zero point 0 (the op's
   signed 4-bit form). A row of 384 holds three blocks; a table weighs 1.04 bytes per
   element in 8 bits, 0.53 in 4.
3. The Gather becomes com.microsoft GatherBlockQuantized over the codes, the scales
   and the zero points (gather_axis from the Gather, quantize_axis the hidden one); the
   float table goes once nothing reads it. A table read by several Gathers is stored
   once. ONNX Runtime looks rows up without expanding the table: 16 rows of 32000 x
   512 took 0.014 ms in uint8 (0.2 ms in int4), where a DequantizeLinear in front of the
   Gather expands the whole table on every run (45 ms).
4. Stats: tables_quantized, tables_skipped, bytes_float, bytes_quantized;
   ctx.report["quantize-embeddings"] states them with the options and the size ratio.

    const %table: f32[30522,384]               const %table_quantized: u8[30522,384] q<u8, axis=1, block=128, ...>
    %e = Gather(%table, %ids) {axis=0}   =>    %e = com.microsoft::GatherBlockQuantized(%table_quantized, %ids,
                                                       %table_scale, %table_zp) {gather_axis=0, quantize_axis=1, ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.ir import DType, Model, NameAllocator, Node, Value
from qcompiler.ir.quant import quantize

from ..analyses.rules import float_by_choice
from ..infra.base import Pass, register_pass
from .weight_quant import blocked_params, check_block_options, replace_with_contrib_op, stored_bytes


@register_pass
class QuantizeEmbeddings(Pass):
    """Store Gather embedding tables as blockwise uint8 or int4 codes (GatherBlockQuantized)."""

    name = "quantize-embeddings"
    reads = frozenset({"quantize", "precision", "group"})

    @dataclass
    class Options:
        """bits: 8 (uint8 codes with zero points) or 4 (int4, symmetric); block_size: values per
        scale along the hidden axis (a power of two >= 16); min_size: tables with fewer elements
        stay float."""

        bits: int = 8
        block_size: int = 128
        min_size: int = 4096

        def __post_init__(self) -> None:
            check_block_options(self.bits, self.block_size, self.min_size)

    def run(self, model: Model, ctx) -> bool:
        names = NameAllocator(model.graph)
        stored: dict[Value, tuple[Value, Value, Value | None]] = {}
        kept = float_by_choice(model)
        for node in list(model.graph.nodes):
            table = _table_of(node)
            if table is None:
                continue
            if node in kept or table.const.size < self.options.min_size:
                self.stats["tables_skipped"] += 1
                continue
            if table not in stored:
                stored[table] = self._store(model, names, table)
            codes, scale, zero_point = stored[table]
            attributes = {"gather_axis": node.attr("axis", 0), "quantize_axis": 1,
                          "block_size": self.options.block_size, "bits": self.options.bits}
            replace_with_contrib_op(model, node, "GatherBlockQuantized", [codes, node.inputs[1], scale, zero_point],
                                    attributes)
        if stored:
            ctx.report[self.name] = self._report()
        return bool(stored)

    def _store(self, model: Model, names: NameAllocator, table: Value) -> tuple[Value, Value, Value | None]:
        """Rule 2: the codes (carrying their parameters), the scales and the zero points as new initializers."""
        four_bit = self.options.bits == 4
        params = blocked_params(table.const, 1, self.options.block_size, DType.INT4 if four_bit else DType.UINT8,
                                symmetric=four_bit)
        arrays = {"quantized": quantize(table.const, params), "scale": params.scale,
                  "zp": None if four_bit else params.zero_point}
        values = [None if array is None else model.graph.add_constant(
                      Value(names.fresh(f"{table.name}_{key}"), const=array, quant=params if key == "quantized" else None))
                  for key, array in arrays.items()]
        self.stats["tables_quantized"] += 1
        self.stats["bytes_float"] += table.const.nbytes
        self.stats["bytes_quantized"] += sum(stored_bytes(a) for a in arrays.values() if a is not None)
        return values[0], values[1], values[2]

    def _report(self) -> dict:
        stats, options = self.stats, self.options
        return {"bits": options.bits, "block_size": options.block_size, "tables": stats["tables_quantized"], "skipped": stats["tables_skipped"],
                "float_bytes": stats["bytes_float"], "quantized_bytes": stats["bytes_quantized"],
                "ratio": round(stats["bytes_float"] / max(stats["bytes_quantized"], 1), 2)}


def _table_of(node: Node) -> Value | None:
    """Rule 1: the embedding table `node` looks rows up in, or None."""
    if node.domain or node.op_type != "Gather" or node.inputs[1].is_const:
        return None
    table = node.inputs[0]
    if table.producer is not None or table.const_array is None:
        return None  # not an initializer holding its data
    data = table.const
    return table if data.ndim == 2 and data.dtype == np.float32 else None
