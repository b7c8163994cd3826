"""Storing float weights as integer codes: their parameters, and the DequantizeLinear that reads them.

Shared by the passes that quantize weights (fold-weights, weight-only, dynamic-quant) and by
quantization-aware training, so every one of them stores a weight the same way.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import DType, Graph, NameAllocator, Node, QuantParams, Value


def weight_params(data: np.ndarray, axis: int | None, dtype: DType, symmetric: bool,
                  reduce_range: bool) -> QuantParams:
    """Parameters covering each channel's [min, max] along `axis` (the whole tensor when None).

    With `reduce_range` the range is doubled, so codes use one bit less: ONNX Runtime's
    u8 x s8 kernels on x86 CPUs without VNNI saturate otherwise (fold_weights.py rule 7).
    """
    reduce = None if axis is None else tuple(d for d in range(data.ndim) if d != axis % data.ndim)
    widen = 2.0 if reduce_range else 1.0
    return QuantParams.from_range(widen * data.min(axis=reduce), widen * data.max(axis=reduce), dtype,
                                  symmetric=symmetric, axis=axis)


def dequantized(graph: Graph, names: NameAllocator, node: Node, value: Value, codes: np.ndarray,
                params: QuantParams) -> Value:
    """A DequantizeLinear of `codes` (a new initializer carrying `params`), inserted before `node`."""
    stored = graph.add_constant(Value(names.fresh(f"{value.name}_quantized"), const=codes, quant=params))
    scale = graph.add_constant(Value(names.fresh(f"{value.name}_scale"), const=params.scale))
    zero_point = graph.add_constant(Value(names.fresh(f"{value.name}_zp"), const=params.zero_point))
    attributes = {} if params.axis is None else {"axis": params.axis}
    if params.block_size is not None:
        attributes["block_size"] = params.block_size
    output = Value(names.fresh(f"{value.name}_dq"), value.type)
    graph.insert_before(node, Node("DequantizeLinear", [stored, scale, zero_point], [output], attributes=attributes))
    return output
