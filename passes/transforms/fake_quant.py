"""Folding fake-quantized constants: DequantizeLinear(QuantizeLinear(w)) on a constant w stores w's codes.

A QAT export, or another tool's, arrives with its weights fake-quantized. Replacing each
such QuantizeLinear by an initializer of the codes it computes (carrying its parameters)
puts int8 in the file, and ONNX Runtime fuses it like any weight of ours. The pair's
parameters are kept as given. fold-weights does this first (its rule 9), and QAT export too.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import DType, Model, NameAllocator, QuantParams, Value
from qcompiler.ir.quant import quantize

from ..analyses.rules import is_qdq


def fold_quantized_constants(model: Model) -> int:
    """Each QuantizeLinear whose input, scale and zero point are constants becomes an
    initializer of its codes carrying the parameters; returns how many."""
    graph = model.graph
    names = NameAllocator(graph)
    folded = 0
    for node in list(graph.nodes):
        data = [v.const_array if v is not None else None for v in node.inputs]
        if not is_qdq(node, "QuantizeLinear") or len(data) < 3 or \
                not all(isinstance(d, np.ndarray) for d in data) or "block_size" in node.attributes:
            continue
        weight = node.inputs[0]
        axis = node.attr("axis", 1) % data[0].ndim if data[1].ndim else None
        params = QuantParams(DType.from_numpy(data[2].dtype), data[1], data[2], axis)
        codes = graph.add_constant(Value(names.fresh(f"{weight.name}_quantized"),
                                         const=quantize(data[0], params), quant=params))
        node.outputs[0].replace_all_uses_with(codes)
        graph.remove(node)
        graph.drop_unread_constants([weight])
        folded += 1
    return folded
