"""weight-only: store MatMul and Gemm weights as blockwise int4 or int8.

Activations stay float: only the weights shrink, which is what bounds large MatMul-heavy
models (file size, memory traffic at batch 1). It needs no calibration data.

1. A weight is a 2-D float32 initializer: MatMul's B ([K, N]) or Gemm's B ([K, N], or
   [N, K] with transB), quantized in blocks of `block_size` along K, the reduction axis.
   K need not be a multiple of `block_size`: the last block is partial. Embedding
   tables are quantize-embeddings' work.
2. Each block's parameters cover its [min, max] (`QuantParams.from_range`, ORT's
   formulas): `symmetric=true` stores int4 [-8, 7] or int8 [-127, 127] with zero point 0,
   `symmetric=false` uint4 or uint8 with a zero point per block. Codes, scales and zero
   points are shaped like the weight with K divided into blocks (blocked QuantParams).
3. `format=matmulnbits` (default) writes com.microsoft ops. MatMul, and Gemm with alpha
   = 1, transA = 0 and C absent or 1-D with beta = 1 (C becomes the bias), become
   MatMulNBits: codes unsigned (a symmetric code + 2^(bits-1), the op's default zero
   point), packed low bits first into uint8 [N, n_blocks, block_size * bits / 8]
   (a partial block padded with the code of 0), scales [N * n_blocks], zero points (only
   when asymmetric) packed the same way per column. No opset requirement. `format=qdq`
   puts a DequantizeLinear {axis, block_size} (opset 21) of the codes in front of the op; the code initializer carries its QuantParams (q<...> in dumps).
4. Why matmulnbits by default, measured by tools/bench_weight_only.py (8 layers
   1024x1024, batch 1, one thread, ORT 1.32 on AVX2 without VNNI; latency over float's):
   ORT fuses DQ(int4 or int8, axis 0) + MatMul into MatMulNBits itself (at accuracy
   level 4), so a MatMul runs the same kernel in both formats (int4: qdq 0.26x,
   matmulnbits 0.21x). A DQ + Gemm mostly stays unfused (transB=1: never; transB=0:
   not once ORT has made a FusedGemm of Gemm + Relu) and dequantizes the whole weight on
   every run: int4 5.6x (transB=0) and 10x (transB=1) slower than float, where
   MatMulNBits runs every form at 0.21-0.26x.
5. `accuracy_level=4` (default, ORT's own choice when it fuses) lets MatMulNBits quantize
   activations to int8 per block inside the kernel: int4 runs 0.21x float against 0.71x
   at level 0, at no measurable SQNR cost (14.8 dB after 8 layers either way); int8 has
   no fast kernel at level 0 (5-11x slower than float) and runs 0.37x at 4, its output
   SQNR dropping from 39.2 to 36.6 dB. `accuracy_level=0` computes x @ dequant(W) in float.
6. Weights under `min_size` elements stay float (default 4096, a 64x64 matrix): they
   weigh little, and the small ones (a classifier head over 10 classes) are the most
   sensitive to 4-bit codes.
7. Nodes kept float (rules.float_by_choice: precision fp16/fp32, quantize=false, and
   their fusion groups) keep float weights. Nodes inside subgraphs are not touched.
   A weight shared by several readers is stored once per form (its DequantizeLinear, or
   the packed codes of its readers' op); the float initializer goes once nothing reads it.
8. Stats: weights_quantized, weights_skipped (too small, kept float, unsupported Gemm
   form, not float32), bytes_float and bytes_quantized (codes at their bit width, scales
   and zero points). ctx.report["weight-only"] states the same with the size ratio.

    const %w: f32[512,256]       const %w_quantized: i4[512,256] q<i4, axis=0, block=128, scale=..., zp=...>
    %y = MatMul(%x, %w)    =qdq=>  %w_dq = DequantizeLinear(%w_quantized, %w_scale, %w_zp) {axis=0, block_size=128}
                                   %y = MatMul(%x, %w_dq)

                    =matmulnbits=> const %w_packed: u8[256,4,64]    const %w_scales: f32[1024]
                                   %y = com.microsoft::MatMulNBits(%x, %w_packed, %w_scales) {K=512, N=256, bits=4, ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, QuantParams, Value
from qcompiler.ir.quant import quantize

from ..analyses.rules import float_by_choice
from ..infra.base import Pass, PassError, register_pass
from .weight_quant import blocked_params, check_block_options, dequantized, replace_with_contrib_op, stored_bytes

_BLOCKED_DQ_OPSET = 21
_DTYPES = {(4, True): DType.INT4, (4, False): DType.UINT4, (8, True): DType.INT8, (8, False): DType.UINT8}


class _Target(NamedTuple):
    """Input `input` of `node` is a weight, blocked along `axis`."""

    node: Node
    input: int
    axis: int


@register_pass
class WeightOnly(Pass):
    """Quantize MatMul/Gemm weights blockwise to int4 or int8; activations stay float."""

    name = "weight-only"
    reads = frozenset({"quantize", "precision", "group"})

    @dataclass
    class Options:
        """bits: 4 or 8; block_size: weights per scale along K (a power of two >= 16);
        symmetric: zero point 0 (else a zero point per block); format: matmulnbits (ORT's
        contrib op) or qdq (DequantizeLinear with block_size, opset 21); min_size: weights
        with fewer elements stay float; accuracy_level: MatMulNBits' compute type (0 float, 4 int8 activations; rule 5)."""

        bits: int = 4
        block_size: int = 128
        symmetric: bool = True
        format: Literal["matmulnbits", "qdq"] = "matmulnbits"
        min_size: int = 4096
        accuracy_level: int = 4

        def __post_init__(self) -> None:
            check_block_options(self.bits, self.block_size, self.min_size)
            if self.accuracy_level not in range(5):
                raise ValueError(f"accuracy_level must be 0..4, not {self.accuracy_level}")

    def requires(self, model: Model, ctx) -> None:
        if self.options.format == "qdq" and model.opset < _BLOCKED_DQ_OPSET:
            raise PassError(f"weight-only{{format=qdq}} needs opset >= {_BLOCKED_DQ_OPSET} for DequantizeLinear with "
                            f"block_size; the model has {model.opset}: convert it first (ir.convert_opset, or "
                            f"onnx.version_converter.convert_version), or use format=matmulnbits")

    def run(self, model: Model, ctx) -> bool:
        graph = model.graph
        names = NameAllocator(graph)
        dtype = _DTYPES[self.options.bits, self.options.symmetric]
        done: dict[tuple[Value, int, str], Value | list[Value | None]] = {}  # (weight, axis, op) -> what replaced it
        before = self.stats["weights_quantized"]
        for target in self._targets(model):
            if self.options.format == "qdq":
                self._to_dequantize(graph, names, target, dtype, done)
            else:
                self._to_matmulnbits(model, names, target, dtype, done)
        changed = self.stats["weights_quantized"] > before
        if changed:
            ctx.report[self.name] = self._report()
        return changed

    def _targets(self, model: Model) -> list[_Target]:
        """Rules 1, 6 and 7: the weights to quantize, counting the ones left float."""
        kept = float_by_choice(model)
        targets = []
        for node in model.graph.nodes:
            found = _weight_of(node)
            if found is None:
                continue
            value = node.inputs[found.input]
            unsupported = self.options.format == "matmulnbits" and node.op_type == "Gemm" and not _nbits_gemm(node)
            if node in kept or value.const.size < self.options.min_size or value.const.dtype != np.float32 \
                    or unsupported:
                self.stats["weights_skipped"] += 1
            else:
                targets.append(found)
        return targets

    def _count(self, data: np.ndarray, *stored: np.ndarray | None) -> None:
        self.stats["weights_quantized"] += 1
        self.stats["bytes_float"] += data.nbytes
        self.stats["bytes_quantized"] += sum(stored_bytes(a) for a in stored if a is not None)

    def _to_dequantize(self, graph: Graph, names: NameAllocator, target: _Target, dtype: DType, done: dict) -> None:
        """Rule 3, qdq: the op reads the weight through a DequantizeLinear {block_size}, shared by its readers."""
        node, value = target.node, target.node.inputs[target.input]
        key = (value, target.axis, "DequantizeLinear")
        if key not in done:
            params = blocked_params(value.const, target.axis, self.options.block_size, dtype, self.options.symmetric)
            output = dequantized(graph, names, node, value, quantize(value.const, params), params)
            done[key] = output
            self._count(value.const, *(a.const for a in output.producer.inputs))
        node.set_input(target.input, done[key])
        graph.drop_unread_constants([value])

    def _to_matmulnbits(self, model: Model, names: NameAllocator, target: _Target, dtype: DType,
                        done: dict) -> None:
        """Rule 3: the MatMul or Gemm becomes MatMulNBits, reading the packed codes."""
        node, value = target.node, target.node.inputs[target.input]
        weight = value.const if target.axis == 0 else value.const.T  # [K, N]
        key = (value, target.axis, "MatMulNBits")
        if key not in done:
            params = blocked_params(weight, 0, self.options.block_size, dtype, self.options.symmetric)
            bits = self.options.bits
            offset = 1 << (bits - 1) if self.options.symmetric else 0
            codes = quantize(weight, params).astype(np.int32) + offset  # unsigned, [K, N]
            last_zero = params.zero_point[-1].astype(np.int32) + offset  # the code of 0 in each column's last block
            done[key] = self._store(model.graph, names, value, {
                "packed": _pack(_blocks(codes.T, self.options.block_size, last_zero), bits),
                "scales": np.ascontiguousarray(params.scale.T).reshape(-1),
                "zero_points": None if self.options.symmetric else
                _pack(params.zero_point.T.astype(np.int32), bits).reshape(-1),
            })
        inputs = [node.inputs[0], *done[key]]
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            inputs += [None, node.inputs[2]]  # g_idx unused; C is the bias
        attributes = {"K": weight.shape[0], "N": weight.shape[1], "bits": self.options.bits,
                      "block_size": self.options.block_size}
        if self.options.accuracy_level:
            attributes["accuracy_level"] = self.options.accuracy_level
        replace_with_contrib_op(model, node, "MatMulNBits", inputs, attributes)

    def _store(self, graph: Graph, names: NameAllocator, value: Value, arrays: dict[str, np.ndarray | None],
               params: QuantParams | None = None) -> list[Value | None]:
        """New initializers `<weight>_<key>` (None stays None), the first carrying `params`; counted (rule 8)."""
        stored = [None if array is None else graph.add_constant(
                      Value(names.fresh(f"{value.name}_{key}"), const=array, quant=params if i == 0 else None))
                  for i, (key, array) in enumerate(arrays.items())]
        self._count(value.const, *arrays.values())
        return stored

    def _report(self) -> dict:
        stats, options = self.stats, self.options
        return {
            "format": options.format, "bits": options.bits, "block_size": options.block_size,
            "symmetric": options.symmetric, "weights": stats["weights_quantized"],
            "skipped": stats["weights_skipped"], "float_bytes": stats["bytes_float"],
            "quantized_bytes": stats["bytes_quantized"],
            "ratio": round(stats["bytes_float"] / max(stats["bytes_quantized"], 1), 2),
        }


def _weight_of(node: Node) -> _Target | None:
    """Rule 1: where `node` reads a 2-D float initializer as a weight, and its K axis."""
    if node.domain:
        return None
    if node.op_type == "MatMul":
        target = _Target(node, 1, 0)
    elif node.op_type == "Gemm":
        target = _Target(node, 1, 1 if node.attr("transB", 0) else 0)
    else:
        return None
    value = node.inputs[target.input]
    if value.producer is not None or value.const_array is None:
        return None  # not an initializer holding its data
    return target if value.const.ndim == 2 else None


def _nbits_gemm(node: Node) -> bool:
    """Whether MatMulNBits computes this Gemm: alpha = 1, A not transposed, C absent or a 1-D bias with beta = 1."""
    c = node.inputs[2] if len(node.inputs) > 2 else None
    bias_ok = c is None or (node.attr("beta", 1.0) == 1.0 and c.shape is not None and len(c.shape) == 1)
    return node.attr("alpha", 1.0) == 1.0 and not node.attr("transA", 0) and bias_ok


def _blocks(rows: np.ndarray, block_size: int, pad: np.ndarray) -> np.ndarray:
    """[N, K] codes as [N, n_blocks, block_size], a partial last block filled with `pad[n]` (the code of 0)."""
    n, k = rows.shape
    blocks = math.ceil(k / block_size)
    filler = np.broadcast_to(pad[:, None], (n, blocks * block_size - k))
    return np.concatenate([rows, filler], axis=1).reshape(n, blocks, block_size)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes packed into uint8 along the last axis, low bits first (a 4-bit row of odd length gets a 0)."""
    if bits == 8:
        return codes.astype(np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), codes.dtype)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
