"""weight-only: store MatMul and Gemm weights as blockwise int4 or int8.

Activations stay float: only the weights shrink, which is what bounds large MatMul-heavy
models (file size, memory traffic at batch 1). Round to nearest (the default) needs no
calibration data; GPTQ and AWQ (rule 9) read it to choose codes that err less on it.

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
   and zero points), inputs_scaled (awq's Muls). ctx.report["weight-only"] states the same
   with the method and the size ratio; for gptq and awq also, per weight and as a mean, the
   SQNR of the op's output x @ W_q against x @ W on the calibration rows, beside RTN's.
9. `method` picks the codes (weight_rounding.py has the rules): `rtn` rounds each block
   to nearest; `gptq` rounds the rows of K in order and spreads each row's error over the
   rows not yet rounded, weighed by the inverse Hessian of the op's input (Frantar et al.);
   `awq` scales each input channel by mean|x|^alpha into the weight before rounding, shrinks
   each block's range where clipping errs less, and divides the input by the scale through
   a Mul in front of the op (Lin et al.). Every block's parameters are blocked_params of
   its rows (awq's range times its clip factor), so the stored form is rule 2's whatever
   the method. Both read the inputs of the float model, one ONNX Runtime pass over the
   calibration data (split into groups past 1 GiB of inputs per batch), kept as X^T X and
   sum |x| per weight in float64: memory K x K per weight, whatever the rows. They need
   calibration data and are refused without it. Readers of one weight pool their inputs.
   Measured by tools/bench_weight_only.py --methods (int4 symmetric MatMulNBits, blocks of
   32, output SQNR against float in ONNX Runtime on held-out data; rtn / gptq / awq): 4
   MatMuls 512x512 with correlated inputs 13.5 / 20.5 / 16.8 dB, the seeded encoder of
   tests/encoder_model.py 22.9 / 24.9 / 29.5, the MiniLM-sized stand-in 9.4 / 17.0 / 15.8
   (blocks of 128 in the README). GPTQ gains most where inputs are correlated, AWQ where a
   few input channels are large (LayerNorm gains); AWQ's Muls cost K floats per weight
   (the encoder's file grows 2.7%). The inputs are the float model's for every layer,
   not the partly quantized model's of the paper's sequential variant.
10. GPTQ inverts X^T X (damped by 1% of its mean diagonal). With fewer calibration rows
    than input channels it is singular and the damping alone keeps it invertible: the
    codes then fit the calibration rows and lose on new data (MiniLM-sized stand-in, 512
    rows for K = 1024: 30.8 dB on the calibration rows, 17 dB held out). The report's
    `warnings` says so, per compile, naming the worst weight.

    const %w: f32[512,256]       const %w_quantized: i4[512,256] q<i4, axis=0, block=128, scale=..., zp=...>
    %y = MatMul(%x, %w)    =qdq=>  %w_dq = DequantizeLinear(%w_quantized, %w_scale, %w_zp) {axis=0, block_size=128}
                                   %y = MatMul(%x, %w_dq)

                    =matmulnbits=> const %w_packed: u8[256,4,64]    const %w_scales: f32[1024]
                                   %y = com.microsoft::MatMulNBits(%x, %w_packed, %w_scales) {K=512, N=256, bits=4, ...}

              =awq, qdq=>          %x_awq_scaled = Mul(%x, %x_awq_scale)                          c = 1 / s
                                   %y = MatMul(%x_awq_scaled, %w_dq)                            codes of W / c
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, QuantParams, Value
from qcompiler.ir.evaluate import tap_groups

from ..analyses.observers import tapped_batches
from ..analyses.rules import float_by_choice
from ..infra.base import Pass, PassError, register_pass
from ..infra.progress import Progress
from .patterns import scale_input
from .weight_quant import check_block_options, dequantized, replace_with_contrib_op, stored_bytes
from .weight_rounding import InputStatistics, Rounded, awq, gptq, output_sqnr_db, rtn

_BLOCKED_DQ_OPSET = 21
_DTYPES = {(4, True): DType.INT4, (4, False): DType.UINT4, (8, True): DType.INT8, (8, False): DType.UINT8}
_TAP_BUDGET = 1 << 30  # bytes of tapped inputs per batch before they are split into groups (rule 9)


class _Target(NamedTuple):
    """Input `input` of `node` is a weight, blocked along `axis`."""

    node: Node
    input: int
    axis: int

    @property
    def key(self) -> tuple[Value, int]:
        """The weight and its K axis: readers sharing both share the codes."""
        return self.node.inputs[self.input], self.axis

    def weight(self) -> np.ndarray:
        """The weight as [K, N]."""
        data = self.node.inputs[self.input].const
        return data if self.axis == 0 else data.T

    @property
    def source(self) -> tuple[Value, bool]:
        """The op's input A, and whether it is read transposed (Gemm with transA: A is [K, m])."""
        return self.node.inputs[0], bool(self.node.op_type == "Gemm" and self.node.attr("transA", 0))


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
        with fewer elements stay float; accuracy_level: MatMulNBits' compute type (0 float, 4 int8 activations; rule 5);
        method: how codes are chosen, rtn (round to nearest) or, from calibration data, gptq or awq (rule 9)."""

        bits: int = 4
        block_size: int = 128
        symmetric: bool = True
        format: Literal["matmulnbits", "qdq"] = "matmulnbits"
        min_size: int = 4096
        accuracy_level: int = 4
        method: Literal["rtn", "gptq", "awq"] = "rtn"

        def __post_init__(self) -> None:
            check_block_options(self.bits, self.block_size, self.min_size)
            if self.accuracy_level not in range(5):
                raise ValueError(f"accuracy_level must be 0..4, not {self.accuracy_level}")

    def requires(self, model: Model, ctx) -> None:
        if self.options.format == "qdq" and model.opset < _BLOCKED_DQ_OPSET:
            raise PassError(f"weight-only{{format=qdq}} needs opset >= {_BLOCKED_DQ_OPSET} for DequantizeLinear with "
                            f"block_size; the model has {model.opset}: convert it first (ir.convert_opset, or "
                            f"onnx.version_converter.convert_version), or use format=matmulnbits")
        if self.options.method != "rtn" and ctx.calibration_data is None:
            raise PassError(f"weight-only{{method={self.options.method}}} rounds each weight against its inputs: it "
                            f"needs calibration data (--calib DATA on the command line, or "
                            f"PassContext(calibration_data=...)); method=rtn needs none")

    def run(self, model: Model, ctx) -> bool:
        graph = model.graph
        names = NameAllocator(graph)
        dtype = _DTYPES[self.options.bits, self.options.symmetric]
        targets = self._targets(model)
        statistics = self._input_statistics(model, targets, ctx.calibration_data) \
            if targets and self.options.method != "rtn" else {}
        rounded: dict[tuple[Value, int], Rounded] = {}
        errors: list[dict] = []
        done: dict[tuple[Value, int, str], Value | list[Value | None]] = {}  # (weight, axis, op) -> what replaced it
        before = self.stats["weights_quantized"]
        for target in targets:
            if target.key not in rounded:
                rounded[target.key] = self._round(target, statistics.get(target.key), dtype, errors)
            chosen = rounded[target.key]
            if chosen.input_scale is not None:
                self._scale_input(graph, names, target, chosen.input_scale)
            if self.options.format == "qdq":
                self._to_dequantize(graph, names, target, chosen, done)
            else:
                self._to_matmulnbits(model, names, target, chosen, done)
        changed = self.stats["weights_quantized"] > before
        if changed:
            ctx.report[self.name] = self._report(errors)
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

    def _input_statistics(self, model: Model, targets: list[_Target], data) -> dict[tuple[Value, int], InputStatistics]:
        """Rule 9: each weight's input rows summed into its statistics, one pass of the data per tap group.
        An input read by several weights (a transformer's Q, K and V) is summed once."""
        measured = {target.source: InputStatistics(target.weight().shape[0]) for target in targets}
        inputs = list(dict.fromkeys(value for value, _ in measured))
        for group in tap_groups(model, inputs, data, _TAP_BUDGET):
            tapped = [inputs[i] for i in group]
            progress = Progress(self.name, operator.length_hint(data) or None, "batches")
            for arrays in tapped_batches(model, tapped, data, progress):
                for value, array in zip(tapped, arrays):
                    for transposed in (False, True):
                        if (value, transposed) in measured:
                            rows = array.T if transposed else array.reshape(-1, array.shape[-1])
                            measured[value, transposed].add(rows)
                del arrays, array  # before the next batch is run: one batch of activations at a time
        sources: dict[tuple[Value, int], dict[tuple[Value, bool], None]] = {}
        for target in targets:
            sources.setdefault(target.key, {})[target.source] = None
        return {key: InputStatistics.total([measured[source] for source in found]) for key, found in sources.items()}

    def _round(self, target: _Target, statistics: InputStatistics | None, dtype: DType,
               errors: list[dict]) -> Rounded:
        """Rules 2 and 9: the codes of the weight by the chosen method, its output error noted where data was read."""
        weight, block, symmetric = target.weight(), self.options.block_size, self.options.symmetric
        nearest = rtn(weight, block, dtype, symmetric)
        if statistics is None:
            return nearest
        if not np.isfinite(statistics.gram).all():
            raise PassError(f"node {target.node.name or target.node.op_type!r}: its input holds NaN or Inf on the "
                            f"calibration data")
        chosen = gptq(weight, statistics.gram, block, dtype, symmetric) if self.options.method == "gptq" else \
            awq(weight, statistics, block, dtype, symmetric)
        errors.append({"weight": target.key[0].name, "sqnr_db": output_sqnr_db(weight, chosen, statistics.gram),
                       "rtn_sqnr_db": output_sqnr_db(weight, nearest, statistics.gram),
                       "rows": statistics.rows, "channels": statistics.channels})
        return chosen

    def _scale_input(self, graph: Graph, names: NameAllocator, target: _Target, input_scale: np.ndarray) -> None:
        """Rule 9, awq: the op reads its input times c, the factor folded out of its weight."""
        value, transposed = target.source
        scale_input(graph, names, value, [target.node],
                    input_scale[:, None] if transposed else input_scale, "awq_scale", "awq_scaled")
        self.stats["inputs_scaled"] += 1

    def _to_dequantize(self, graph: Graph, names: NameAllocator, target: _Target, rounded: Rounded,
                       done: dict) -> None:
        """Rule 3, qdq: the op reads the weight through a DequantizeLinear {block_size}, shared by its readers."""
        node, value = target.node, target.node.inputs[target.input]
        key = (value, target.axis, "DequantizeLinear")
        if key not in done:
            codes, params = rounded.codes, rounded.params
            if target.axis == 1:  # stored [N, K]
                codes, params = codes.T, QuantParams(params.dtype, params.scale.T, params.zero_point.T, axis=1,
                                                     block_size=params.block_size)
            output = dequantized(graph, names, node, value, codes, params)
            done[key] = output
            self._count(value.const, *(a.const for a in output.producer.inputs))
        node.set_input(target.input, done[key])
        graph.drop_unread_constants([value])

    def _to_matmulnbits(self, model: Model, names: NameAllocator, target: _Target, rounded: Rounded,
                        done: dict) -> None:
        """Rule 3: the MatMul or Gemm becomes MatMulNBits, reading the packed codes."""
        node, value = target.node, target.node.inputs[target.input]
        k, n = rounded.codes.shape
        key = (value, target.axis, "MatMulNBits")
        if key not in done:
            params = rounded.params
            bits = self.options.bits
            offset = 1 << (bits - 1) if self.options.symmetric else 0
            codes = rounded.codes.astype(np.int32) + offset  # unsigned, [K, N]
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
        attributes = {"K": k, "N": n, "bits": self.options.bits, "block_size": self.options.block_size}
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

    def _report(self, errors: list[dict]) -> dict:
        stats, options = self.stats, self.options
        measured = {} if not errors else {
            "output_sqnr_db": round(float(np.mean([e["sqnr_db"] for e in errors])), 2),
            "rtn_output_sqnr_db": round(float(np.mean([e["rtn_sqnr_db"] for e in errors])), 2),
            "layers": errors,
            "warnings": _few_rows(errors) if options.method == "gptq" else [],
        }
        return {
            "method": options.method, "format": options.format, "bits": options.bits, "block_size": options.block_size,
            "symmetric": options.symmetric, "weights": stats["weights_quantized"],
            "skipped": stats["weights_skipped"], "float_bytes": stats["bytes_float"],
            "quantized_bytes": stats["bytes_quantized"],
            "ratio": round(stats["bytes_float"] / max(stats["bytes_quantized"], 1), 2),
            **measured,
        }


def _few_rows(errors: list[dict]) -> list[str]:
    """Rule 10: the weights whose X^T X had fewer calibration rows than input channels, said in one line."""
    few = [e for e in errors if e["rows"] < e["channels"]]
    if not few:
        return []
    worst = min(few, key=lambda e: e["rows"] / e["channels"])
    return [f"gptq: {len(few)} of {len(errors)} weights saw fewer calibration rows than input channels (fewest: "
            f"{worst['rows']} rows for {worst['channels']} channels, %{worst['weight']}); X^T X is singular there, "
            f"so their codes fit those rows more than new data: give at least "
            f"{max(e['channels'] for e in few)} rows (tokens, for a transformer)"]


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
