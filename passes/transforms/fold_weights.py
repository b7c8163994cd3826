"""fold-weights: store each planned weight as an int8 initializer and each bias as int32, behind a DequantizeLinear.

1. Every weight of a quantized op's plan (rules.py: Conv axis 0, ConvTranspose axis 1,
   Gemm's B axis 0 or 1 by transB, MatMul's 2-D B axis 1) is quantized per channel along
   the plan's axis from its per-channel min/max (`QuantParams.from_range`; symmetric
   int8 by default), or per tensor when `per_channel=false` or the plan has no axis.
   A node's `meta["weight_scheme"]` ("per-channel" or "per-tensor", from a recipe
   override) wins over the option for that node.
   The int8 array becomes a new initializer carrying the parameters; a DequantizeLinear
   (with `axis` when per channel) feeds the op where the float weight was, and the float
   weight goes when nothing else reads it. A channel of zeros gets scale 1.0 (from_range,
   as ONNX Runtime does): its codes are all 0, exact, and its bias scale stays positive.
2. The bias (plan.bias) becomes int32 with zero point 0 and scale s_in * s_w[c]: s_in is
   the scale of the DequantizeLinear feeding the activation input (placed by place-qdq),
   s_w the weight's, per output channel. A weight with k channel scales and a bias of
   n = k * group entries uses s_w[c mod k]: ConvTranspose's axis 1 counts channels within
   a group, so output channel g * k + j has scale s_w[j] (rules.conv_transpose).
3. A bias stays float when the activation input is not read through a DequantizeLinear
   with a constant scalar scale (not quantized: ONNX Runtime then runs the op in float
   anyway) or the scales do not line up with the bias; counted as `biases_float`.
4. Bias codes beyond int32 are clipped to it (a bias over 2^31 * s_in * s_w is far out of
   any trained range) and counted as `biases_clipped`, so the report shows it.
5. Weights whose data is not here (an elided blob) are left float and counted as
   `weights_skipped`. A weight shared by several
   ops is quantized once per axis and read through one DequantizeLinear.
6. Per-channel DequantizeLinear needs opset 13: with `per_channel=true` a lower opset is
   refused with a PassError naming legalize-opset.
7. `reduce_range=true` quantizes weights with one bit less (codes within [-64, 64]).
   ONNX Runtime's u8 x s8 kernels on x86 CPUs without VNNI (AVX2 `vpmaddubsw`) add
   pairs of products in int16 and saturate: 255 * 127 * 2 overflows, 255 * 64 * 2 does
   not. On such a CPU a full-range model loses ~15 dB SQNR once ORT fuses QLinearConv
   (the float reference of the same Q/DQ graph does not), so set it there; it is ORT's
   own `reduce_range`. Unset, the target decides (`Target.reduce_range`): on only for
   ort-cpu on an x86 CPU without VNNI; VNNI CPUs and other runtimes need no headroom.
8. Nodes at precision fp16 (`node.meta["precision"]`, rules.PRECISIONS; they stay float)
   store their float32 constant inputs as float16 initializers behind a Cast to float32:
   half the bytes, float32 compute (ONNX Runtime's CPU provider has no fp16 Conv or
   Gemm). A constant beyond float16's finite range stays float32 (`fp16_kept_fp32`).
9. A model that arrives with its weights fake-quantized, DequantizeLinear(QuantizeLinear(w))
   on a constant w (a QAT export, another tool's), gets the codes that QuantizeLinear
   computes as an initializer carrying its parameters (`quantize_folded`, fake_quant.py).
10. Given `ctx.variants` (an analysis emitting many variants of one model), a weight's
    parameters and codes, and its float16 copy, are computed once for all the variants
    (infra/variants.py): the same array with the same options gives the same result.

    const %w: f32[8,3,3,3]                  const %w_quantized: i8[8,3,3,3] q<i8, axis=0, scale=[...], zp=[...]>
    const %b: f32[8]                        const %b_quantized: i32[8] q<i32, axis=0, scale=[s_in*s_w...], zp=[...]>
    %x_dq = DequantizeLinear(%x_q, ...)  => %w_dq = DequantizeLinear(%w_quantized, %w_scale, %w_zp) {axis=0}
    %y = Conv(%x_dq, %w, %b)                %b_dq = DequantizeLinear(%b_quantized, %b_scale, %b_zp) {axis=0}
                                            %y = Conv(%x_dq, %w_dq, %b_dq)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from qcompiler.ir import DType, Graph, Model, NameAllocator, Node, QuantParams, Value
from qcompiler.ir.quant import dtype_range, quantize

from ..infra.base import Pass, PassError, register_pass
from ..infra.overrides import chosen
from ..infra.pipeline import parse_pipeline
from .fake_quant import fold_quantized_constants
from ..analyses.rules import Bias, Weight, is_qdq, plans
from ..infra.target import weight_reduce_range
from .weight_quant import dequantized, weight_params

_PER_CHANNEL_OPSET = 13
_WEIGHT_DTYPES = {"int8": DType.INT8}


@register_pass
class FoldWeights(Pass):
    """Quantize weights to int8 initializers (per channel) and biases to int32, each behind a DequantizeLinear."""

    name = "fold-weights"
    reads = frozenset({"quantize", "precision", "group", "weight_scheme"})
    gives = frozenset({"weights-folded"})

    @dataclass
    class Options:
        """per_channel: one scale per output channel (else per tensor); weight_dtype: the
        integer type of weights; symmetric: zero point 0 (what integer kernels want);
        reduce_range: one bit less for CPUs without VNNI; unset: the target's choice (rule 7)."""

        per_channel: bool = True
        weight_dtype: Literal["int8"] = "int8"
        symmetric: bool = True
        reduce_range: bool | None = None

    def requires(self, model: Model, ctx) -> None:
        if self.options.per_channel and model.opset < _PER_CHANNEL_OPSET:
            raise PassError(f"fold-weights{{per_channel=true}} needs opset >= {_PER_CHANNEL_OPSET} for per-channel "
                            f"DequantizeLinear; the model has {model.opset}: run legalize-opset before it, "
                            f"or use per_channel=false")

    def run(self, model: Model, ctx) -> bool:
        self.reduce_range = weight_reduce_range(self.options.reduce_range, ctx)
        self.variants = ctx.variants
        before = sum(self.stats.values())
        self.stats["quantize_folded"] += fold_quantized_constants(model)
        graph = model.graph
        names = NameAllocator(graph)
        folded: dict[tuple[Value, int | None], Value] = {}  # (float weight, axis) -> its DQ output
        for node, plan in ctx.analysis("plans", lambda: plans(model)).items():
            for weight in plan.weights:
                self._fold_weight(graph, names, node, weight.input, weight_axis(node, weight, self.options), folded)
            if plan.bias is not None:
                self._fold_bias(graph, names, node, plan.bias)
        for node in [n for n in graph.nodes if n.meta.get("precision") == "fp16"]:
            self._store_fp16(graph, names, node)
        return sum(self.stats.values()) > before

    def _store_fp16(self, graph: Graph, names: NameAllocator, node: Node) -> None:
        """Rule 8: each float32 constant input becomes a float16 initializer read through a Cast."""
        for index, value in enumerate(node.inputs):
            data = value.const_array if value is not None else None
            if data is None or data.dtype != np.float32:
                continue
            half = self._derived(("fp16",), data, lambda: _fp16_copy(data))
            if half is None:
                self.stats["fp16_kept_fp32"] += 1
                continue
            stored = graph.add_constant(Value(names.fresh(f"{value.name}_fp16"), const=half))
            output = Value(names.fresh(f"{value.name}_fp32"), value.type)
            graph.insert_before(node, Node("Cast", [stored], [output], attributes={"to": int(DType.FLOAT)}))
            node.set_input(index, output)
            graph.drop_unread_constants([value])
            self.stats["weights_fp16"] += 1

    def _fold_weight(self, graph: Graph, names: NameAllocator, node: Node, index: int, axis: int | None,
                     folded: dict[tuple[Value, int | None], Value]) -> None:
        value = node.inputs[index]
        data = value.const_array
        if data is None:
            self.stats["weights_skipped"] += 1
            return
        if (value, axis) not in folded:
            key = ("codes", axis, self.options.weight_dtype, self.options.symmetric, self.reduce_range)
            params, codes = self._derived(key, data, lambda: _codes(data, axis, self.options, self.reduce_range))
            folded[value, axis] = dequantized(graph, names, node, value, codes, replace(params))
            self.stats["weights_folded"] += 1
        node.set_input(index, folded[value, axis])
        graph.drop_unread_constants([value])

    def _derived(self, key: tuple, data: np.ndarray, compute):
        """`compute()`, or what it gave for `data` in an earlier variant of the model (rule 10)."""
        return compute() if self.variants is None else self.variants.get(key, data, compute)

    def _fold_bias(self, graph: Graph, names: NameAllocator, node: Node, bias: Bias) -> None:
        value = node.inputs[bias.input]
        data = value.const_array
        scale = _bias_scale(node.inputs[bias.activation], node.inputs[bias.weight], len(data)) \
            if data is not None else None
        if scale is None:
            self.stats["biases_float"] += 1
            return
        params = QuantParams(DType.INT32, scale, np.zeros(scale.shape, np.int32), axis=None if scale.ndim == 0 else 0)
        qmin, qmax = dtype_range(DType.INT32)
        codes = np.rint(data.astype(np.float32) / scale)
        self.stats["biases_clipped"] += int(np.count_nonzero((codes < qmin) | (codes > qmax)))
        node.set_input(bias.input, dequantized(graph, names, node, value, quantize(data, params), params))
        graph.drop_unread_constants([value])
        self.stats["biases_folded"] += 1


def weight_axis(node: Node, weight: Weight, options: FoldWeights.Options) -> int | None:
    """The axis a planned weight is quantized along, None per tensor: the node's `weight_scheme`
    mark, else the `per_channel` option (rule 1)."""
    scheme = node.meta.get("weight_scheme")
    per_channel = options.per_channel if scheme is None else scheme == "per-channel"
    return weight.axis if per_channel else None


def _fp16_copy(data: np.ndarray) -> np.ndarray | None:
    """`data` as float16, or None when it passes float16's finite range (rule 8)."""
    return None if np.abs(data).max(initial=0.0) > np.finfo(np.float16).max else data.astype(np.float16)


def _codes(data: np.ndarray, axis: int | None, options: FoldWeights.Options,
           reduce_range: bool) -> tuple[QuantParams, np.ndarray]:
    params = folded_params(data, axis, options, reduce_range)
    return params, quantize(data, params)


def folded_params(data: np.ndarray, axis: int | None, options: FoldWeights.Options, reduce_range: bool) -> QuantParams:
    """The parameters fold-weights stores a weight with; bias-correct computes the same codes from them."""
    return weight_params(data, axis, _WEIGHT_DTYPES[options.weight_dtype], options.symmetric, reduce_range)


def following_options(following: str) -> FoldWeights.Options:
    """The options of the fold-weights step that follows (rule 2), its defaults when none does."""
    options = parse_pipeline(following).options_of(FoldWeights.name) if following else None
    return options if options is not None else FoldWeights.Options()


def folded_weight(node: Node, plan) -> tuple[Weight, np.ndarray | None] | None:
    """The float weight (input 1) of a Conv, Gemm or MatMul reading an activation at input 0, that fold-weights
    stores, for passes that work out its codes first: (its plan entry, its data, None when the data is elided);
    None when the node has no such weight."""
    if node.domain or node.op_type not in ("Conv", "Gemm", "MatMul") or plan.activations[:1] != (0,):
        return None
    weight = next((w for w in plan.weights if w.input == 1), None)
    if weight is None or node.inputs[1] is None:
        return None
    data = node.inputs[1].const_array
    if data is not None and (data.dtype.kind != "f" or (node.op_type != "Conv" and data.ndim != 2)):
        return None
    return weight, data


def weight_for(algorithm: Pass, node: Node, plan, fold, reduce_range: bool,
               skipped: str = "skipped") -> tuple[np.ndarray, QuantParams] | None:
    """What an accuracy algorithm changes of `node`: the data of its `folded_weight` and the parameters fold-weights
    will store it with; None when the node has none, when the recipe's `algorithms` mark leaves the algorithm out
    (counted `not_chosen`) or when the data is elided (counted under `skipped`)."""
    found = folded_weight(node, plan)
    if found is None:
        return None
    if not chosen(node, algorithm.name):
        algorithm.stats["not_chosen"] += 1
        return None
    weight, data = found
    if data is None:
        algorithm.stats[skipped] += 1
        return None
    return data, folded_params(data, weight_axis(node, weight, fold), fold, reduce_range)


def _dq_scale(value: Value | None) -> np.ndarray | None:
    """The scale of the DequantizeLinear making `value`, when it is a constant."""
    producer = value.producer if value is not None else None
    if not is_qdq(producer, "DequantizeLinear"):
        return None
    data = producer.inputs[1].const_array
    return None if data is None else data.astype(np.float32)


def _bias_scale(activation: Value | None, weight: Value | None, channels: int) -> np.ndarray | None:
    """s_in * s_w per output channel (rule 2), a scalar when both are per tensor; None when unknown."""
    s_in, s_w = _dq_scale(activation), _dq_scale(weight)
    if s_in is None or s_w is None or s_in.ndim != 0:
        return None
    if s_w.ndim == 0:
        return s_in * s_w
    if channels % s_w.size:
        return None
    return s_in * np.tile(s_w, channels // s_w.size)
