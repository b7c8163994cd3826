"""Storing float weights as integer codes: their parameters, and the DequantizeLinear that reads them.

Shared by the passes that quantize weights (fold-weights, weight-only, dynamic-quant,
quantize-embeddings) and by quantization-aware training, so every one of them stores a
weight the same way.
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, QuantParams, Value

from .patterns import erase

CONTRIB_DOMAIN = "com.microsoft"


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


def check_block_options(bits: int, block_size: int, min_size: int) -> None:
    """The options blockwise storage takes: 4 or 8 bits, blocks of a power of two >= 16 (what
    ONNX Runtime's blocked kernels take), a non-negative minimum size."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, not {block_size}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, not {min_size}")


def blocked_params(data: np.ndarray, axis: int, block_size: int, dtype: DType, symmetric: bool,
                   shrink: np.ndarray | float = 1.0) -> QuantParams:
    """Parameters per block of `block_size` along `axis` of a 2-D tensor.

    A partial last block is padded with zeros to find its range: from_range widens every
    range to include 0 anyway, so the padding changes nothing. `shrink` scales each
    block's [min, max] ([blocks, other dim], or one factor): below 1 it clips the block's
    extremes to round the rest finer.
    """
    moved = np.moveaxis(data, axis, 0)
    blocks = math.ceil(moved.shape[0] / block_size)
    padded = np.pad(moved, ((0, blocks * block_size - moved.shape[0]), (0, 0)))
    grouped = padded.reshape(blocks, block_size, -1)
    lo, hi = grouped.min(axis=1) * shrink, grouped.max(axis=1) * shrink
    flat = QuantParams.from_range(lo.reshape(-1), hi.reshape(-1), dtype, symmetric=symmetric, axis=0)
    shape = (blocks, moved.shape[1])
    return QuantParams(dtype, np.moveaxis(flat.scale.reshape(shape), 0, axis),
                       np.moveaxis(flat.zero_point.reshape(shape), 0, axis), axis=axis, block_size=block_size)



def stored_bytes(array: np.ndarray) -> int:
    """Bytes an initializer takes in the file: ONNX packs 4-bit types two to a byte."""
    return math.ceil(array.size * DType.from_numpy(array.dtype).bitwidth / 8)


def replace_with_contrib_op(model: Model, node: Node, op_type: str, inputs: list[Value | None],
                            attributes: dict) -> None:
    """`node` gives way to a com.microsoft `op_type` node making the same output; unread weights go."""
    old = node.outputs[0]
    new = Node(op_type, inputs, [Value(old.name, old.type)], attributes=attributes, domain=CONTRIB_DOMAIN,
               name=node.name, meta=node.meta)
    model.graph.insert_before(node, new)
    old.replace_all_uses_with(new.outputs[0])
    erase(model.graph, [node])
    model.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
