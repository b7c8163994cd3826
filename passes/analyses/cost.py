"""How much work an op is: what precision choices weigh, and what the kernel report shares out.

1. `node_macs`: multiply-accumulates of a Conv, ConvTranspose, Gemm or MatMul from IR
   shapes (symbolic and unknown dims count as 1; see its docstring for the guesses).
2. `work`: MACs for those ops; for any other op, the elements of its outputs (one
   operation each: an Add, a Softmax, a Concat's copy).
3. `emitted_cost` of a model in QDQ form: the MACs of each compute op times the bytes it
   computes with on the target (target.py): `integer_mac_bytes` where `runs_integer`
   (an 8-bit kernel), `float_mac_bytes` elsewhere.
   A MatMulInteger (dynamic-quant's, which ONNX Runtime fuses into its dynamic kernels)
   counts as an 8-bit MatMul.
4. `runs_integer` mirrors the QDQ fusions ONNX Runtime makes: every float input of the
   op read through a DequantizeLinear of an 8-bit tensor (int32 for a bias), and for
   Conv, ConvTranspose and Gemm the output, through a chain of activations the target's
   kernels absorb (Relu, Clip on ort-cpu), read only by an 8-bit QuantizeLinear (MatMul has a kernel with float
   output, MatMulIntegerToFloat). kernels.py reads what ONNX Runtime really chose; this
   is the estimate a pass can make without running it (the tests compare the two).
"""

from __future__ import annotations

import math

from qcompiler.ir import DType, Model, Node, Value

from ..infra.target import Target

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_COSTED_OPS = COMPUTE_OPS | {"MatMulInteger"}  # rule 3
_NEEDS_QUANTIZED_OUTPUT = frozenset({"Conv", "ConvTranspose", "Gemm"})
_8_BIT = frozenset({DType.INT8, DType.UINT8})
_READ = _8_BIT | {DType.INT32}  # int32: a bias


def work(node: Node) -> int:
    """Rule 2: MACs of a compute op, else the number of elements it writes."""
    if not node.domain and node.op_type in COMPUTE_OPS:
        return node_macs(node)
    return sum(math.prod(_dims(v) or (1,)) for v in node.outputs)


def emitted_cost(model: Model, target: Target) -> int:
    """Rule 3: MACs x bytes over the compute ops of the main graph."""
    return sum(node_macs(n) * (target.integer_mac_bytes if runs_integer(n, target) else target.float_mac_bytes)
               for n in model.graph.nodes if not n.domain and n.op_type in _COSTED_OPS)


def runs_integer(node: Node, target: Target) -> bool:
    """Rule 4: whether ONNX Runtime's CPU provider would fuse this compute op into an 8-bit kernel."""
    for value in node.inputs:
        if value is None or value.dtype not in (DType.FLOAT, None):
            continue
        producer = value.producer
        if producer is None or producer.op_type != "DequantizeLinear" or producer.inputs[0].dtype not in _READ:
            return False
    if node.op_type not in _NEEDS_QUANTIZED_OUTPUT:
        return True
    value = node.outputs[0]
    while True:
        readers = value.consumers()
        if len(readers) != 1 or value.is_graph_output():
            return False
        reader = readers[0]
        if reader.op_type == "QuantizeLinear" and not reader.domain:
            return reader.outputs[0].dtype in _8_BIT
        if reader.op_type not in target.absorbed or reader.domain:
            return False
        value = reader.outputs[0]


def node_macs(node: Node) -> int:
    """Multiply-accumulates of a Conv, ConvTranspose, Gemm or MatMul (or MatMulInteger, MatMulNBits) from its IR shapes.

    Symbolic and unknown dims count as 1. Approximations when a shape is unknown:
    Conv without an output shape takes the input's spatial size (stride 1, 'same'
    padding); ConvTranspose without an input shape takes weight size x output spatial
    size (over by the stride product); Gemm and MatMul take whichever operand gives each
    of M, K, N. An unknown weight shape contributes 1.
    """
    x, w = (_dims(v) for v in node.inputs[:2])
    out = _dims(node.outputs[0])
    if node.op_type == "Conv":
        if out is None:
            spatial = x[2:] if x is not None else ()
            out = (x[0] if x else 1, w[0] if w else 1, *spatial)
        return math.prod(out) * math.prod(w[1:] if w else ())
    if node.op_type == "ConvTranspose":
        per_input = math.prod(w[1:] if w else ())
        if x is not None:
            return math.prod(x) * per_input
        return math.prod(w or ()) * math.prod(out[2:] if out else ())
    if node.op_type == "Gemm":
        a, b = x or (1, 1), w or (1, 1)
        m = a[1] if node.attr("transA", 0) else a[0]
        k = a[0] if node.attr("transA", 0) else a[1]
        n = b[0] if node.attr("transB", 0) else b[1]
        return (math.prod(out) if out is not None else m * n) * k
    if node.op_type == "MatMulNBits":  # com.microsoft: B is packed, K and N are attributes
        return math.prod(x[:-1] if x else ()) * node.attr("K", 1) * node.attr("N", 1)
    if node.op_type in ("MatMul", "MatMulInteger"):
        k = x[-1] if x else w[-2] if w and len(w) > 1 else w[0] if w else 1
        if out is None:
            out = (*(x[:-1] if x else ()), w[-1] if w and len(w) > 1 else 1)
        return math.prod(out) * k
    raise ValueError(f"{node!r} is not a Conv, ConvTranspose, Gemm, MatMul, MatMulInteger or MatMulNBits")


def _dims(value: Value | None) -> tuple[int, ...] | None:
    """The shape with symbolic and unknown dims as 1; None when the rank is unknown."""
    shape = value.shape if value is not None else None
    return None if shape is None else tuple(d if isinstance(d, int) else 1 for d in shape)
