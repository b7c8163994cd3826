"""The smooth-quant pass: the float function kept (ONNX Runtime), s against numpy, int8 gain on outlier channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run_onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir
from qcompiler.passes import PassContext, PassError, PassManager, PipelineError
from qcompiler.ir.evaluate import sqnr_db

HIDDEN, TOKENS = 16, 6
INT8 = "canonicalize,fuse,{}insert-observers,calibrate,place-qdq,fold-weights{{reduce_range=true}},cleanup"


class Builder:
    """An onnx.helper graph under construction: its nodes and initializers, each named by the caller."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def const(self, name: str, data: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.asarray(data, np.float32), name))
        return name

    def ints(self, name: str, data: list[int]) -> str:
        self.weights.append(numpy_helper.from_array(np.asarray(data, np.int64), name))
        return name

    def random(self, name: str, *shape: int, scale: float = 0.3) -> str:
        return self.const(name, scale * self.rng.standard_normal(shape))

    def op(self, op_type: str, *inputs: str, name: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attributes))
        return name

    def layernorm(self, x: str, name: str, gamma: np.ndarray | None = None) -> str:
        gamma = 1 + 0.1 * self.rng.standard_normal(HIDDEN) if gamma is None else gamma
        return self.op("LayerNormalization", x, self.const(f"{name}_g", gamma), self.random(f"{name}_b", HIDDEN),
                       name=name, axis=-1)

    def linear(self, x: str, name: str, rows: int = HIDDEN, cols: int = HIDDEN) -> str:
        y = self.op("MatMul", x, self.random(f"{name}_w", rows, cols), name=f"{name}_mm")
        return self.op("Add", y, self.random(f"{name}_bias", cols, scale=0.1), name=name)

    def model(self, x_shape: tuple, outputs: list[str], opset: int = 21) -> ir.Model:
        graph = helper.make_graph(
            self.nodes, "smooth", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.weights)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return ir.load_model(proto.SerializeToString())


def transformer(layers: int = 2) -> ir.Model:
    """Pre-LN blocks (attention, Gelu MLP), then a head: Mul(gamma) + Add(beta) tail into Gemm {transB=1}."""
    g = Builder()
    x = "x"
    for i in range(layers):
        a = g.layernorm(x, f"ln{i}a")
        q, k, v = (g.op("MatMul", a, g.random(f"w{p}{i}", HIDDEN, HIDDEN), name=f"{p}{i}") for p in "qkv")
        kt = g.op("Transpose", k, name=f"kt{i}", perm=[0, 2, 1])
        scores = g.op("Mul", g.op("MatMul", q, kt, name=f"qk{i}"), g.const(f"c{i}", np.array(0.25)), name=f"sc{i}")
        attended = g.op("MatMul", g.op("Softmax", scores, name=f"p{i}", axis=-1), v, name=f"pv{i}")
        x = g.op("Add", x, g.linear(attended, f"o{i}"), name=f"r{i}a")
        m = g.layernorm(x, f"ln{i}m")
        hidden = g.op("Gelu", g.linear(m, f"fc{i}", cols=2 * HIDDEN), name=f"gelu{i}")
        x = g.op("Add", x, g.linear(hidden, f"proj{i}", rows=2 * HIDDEN), name=f"r{i}m")
    pooled = g.op("ReduceMean", x, g.ints("axes", [1]), name="pool", keepdims=0)
    z = g.op("Mul", pooled, g.random("head_g", HIDDEN), name="head_scaled")
    z = g.op("Add", z, g.random("head_b", HIDDEN), name="head_shifted")
    head = g.op("Gemm", z, g.random("head_w", 4, HIDDEN), name="head", transB=1)
    return g.model(("N", TOKENS, HIDDEN), [head])


def feeds(count: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, TOKENS, HIDDEN)).astype(np.float32)} for _ in range(count)]


def smooth(model: ir.Model, data, pipeline: str = "smooth-quant") -> PassContext:
    ctx = PassContext(calibration_data=data)
    PassManager(f"canonicalize,fuse,{pipeline}").run(model, ctx)
    return ctx


def outputs(model: ir.Model, data) -> list[np.ndarray]:
    """Every output of every batch, joined in one flat list."""
    proto = ir.to_onnx(model)
    return [array for f in data for array in run_onnx(proto, f)]


def weight_of(model: ir.Model, node_name: str) -> np.ndarray:
    node = next(n for n in model.graph.nodes if n.name == node_name)
    return node.inputs[1].const


@pytest.mark.parametrize("insert_mul", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_float_function_kept(alpha, insert_mul):
    data, held_out = feeds(4), feeds(3, seed=7)
    expected = outputs(transformer(), held_out)
    model = transformer()
    ctx = smooth(model, data, f"smooth-quant{{alpha={alpha},insert_mul={str(insert_mul).lower()}}}")
    report = ctx.report["smooth-quant"]
    # folded: ln{0,1}{a,m} and the head's Mul+Add tail; a Mul for attention outputs and Gelu outputs
    assert (report["folded"], report["muls_inserted"]) == (5, 4 if insert_mul else 0)
    assert report["not_foldable"] == (0 if insert_mul else 4) and report["batches"] == 4
    assert report["weights_scaled"] == 3 * 2 + 1 * 2 + 1 + (4 if insert_mul else 0)
    for want, got in zip(expected, outputs(model, held_out)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def single_ln(gamma: np.ndarray, beta: np.ndarray, w: np.ndarray, also_read_by: str = "") -> ir.Model:
    g = Builder(seed=3)
    a = g.op("LayerNormalization", "x", g.const("g", gamma), g.const("b", beta), name="ln", axis=-1)
    out = [g.op("MatMul", a, g.const("w", w), name="mm")]
    if also_read_by:
        out.append(g.op(also_read_by, *([a, a] if also_read_by == "Add" else [a]), name="other"))
    return g.model(("N", TOKENS, HIDDEN), out)


def numpy_layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5) * gamma + beta


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_scales_match_numpy(alpha):
    rng = np.random.default_rng(5)
    gamma = 1 + rng.standard_normal(HIDDEN)
    beta = np.linspace(-1, 1, HIDDEN)
    gamma[[3, 8]] = beta[8] = 0.0  # channel 3 holds only beta[3]; channel 8 is 0 throughout: s = 1
    w = rng.standard_normal((HIDDEN, 8))
    w[5] = 0.0  # a zero row: nothing to balance, s = 1
    model = single_ln(gamma, beta, w)
    data = feeds(3)
    smooth(model, data, f"smooth-quant{{alpha={alpha}}}")

    act_max = np.max([np.abs(numpy_layernorm(f["x"], gamma, beta)).max(axis=(0, 1)) for f in data], axis=0)
    w_max = np.abs(w).max(axis=1)
    s = np.ones(HIDDEN)
    live = (act_max > 0) & (w_max > 0)
    s[live] = act_max[live] ** alpha / w_max[live] ** (1 - alpha)
    assert s[5] == s[8] == 1.0
    ln = next(n for n in model.graph.nodes if n.op_type == "LayerNormalization")
    np.testing.assert_allclose(weight_of(model, "mm"), w * s[:, None], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ln.inputs[1].const, gamma / s, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ln.inputs[2].const, beta / s, rtol=1e-5, atol=1e-7)


def test_decomposed_layernorm_folds_into_gamma_and_beta():
    """Opset 13: fuse only groups the decomposed LayerNorm; its Mul(gamma) + Add(beta) tail takes 1/s."""
    g = Builder(seed=8)
    mean = g.op("ReduceMean", "x", name="mean", axes=[-1])
    centred = g.op("Sub", "x", mean, name="centred")
    variance = g.op("ReduceMean", g.op("Mul", centred, centred, name="square"), name="variance", axes=[-1])
    std = g.op("Sqrt", g.op("Add", variance, g.const("eps", np.array(1e-5)), name="shifted_var"), name="std")
    scaled = g.op("Mul", g.op("Div", centred, std, name="normed"), g.random("gamma", HIDDEN), name="scaled")
    a = g.op("Add", g.random("beta", HIDDEN), scaled, name="ln")
    y = g.op("MatMul", a, g.random("w", HIDDEN, 8), name="mm")
    model = g.model(("N", TOKENS, HIDDEN), [y], opset=13)
    data = feeds(2)
    expected = outputs(model, data)
    ctx = smooth(model, data)
    assert ctx.report["smooth-quant"]["folded"] == 1
    assert {n.meta.get("group") for n in model.graph.nodes if n.op_type in ("Mul", "Add")} == {"layernorm#0"}
    for want, got in zip(expected, outputs(model, data)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def outlier_model() -> ir.Model:
    """LN whose gamma makes 3 channels 100x larger; the next MatMul's rows shrink by as much (same function)."""
    rng = np.random.default_rng(11)
    gamma = 1 + 0.1 * rng.standard_normal(HIDDEN)
    w = 0.3 * rng.standard_normal((HIDDEN, HIDDEN))
    outliers = [2, 9, 13]
    gamma[outliers] *= 100
    w[outliers] /= 100
    g = Builder(seed=12)
    a = g.layernorm("x", "ln", gamma)
    hidden = g.op("Relu", g.op("MatMul", a, g.const("w1", w), name="fc1"), name="act")
    y = g.op("MatMul", hidden, g.random("w2", HIDDEN, 8), name="fc2")
    return g.model(("N", TOKENS, HIDDEN), [y])


def model_sqnr(model: ir.Model, data, reference) -> float:
    return sqnr_db(list(reference), list(outputs(model, data)))


def test_outlier_channels_quantize_far_better_smoothed():
    calib, held_out = feeds(8, seed=2), feeds(4, seed=9)
    reference = outputs(outlier_model(), held_out)
    measured = {}
    for name, step in (("plain", ""), ("smoothed", "smooth-quant,")):
        model = outlier_model()
        PassManager(INT8.format(step)).run(model, PassContext(calibration_data=calib))
        measured[name] = model_sqnr(model, held_out, reference)
    assert measured["smoothed"] >= measured["plain"] + 20, measured  # measured: 2.5 dB -> 33 dB


def test_samples_caps_the_batches_read():
    """Whole batches of 2 rows until 3 rows are seen: 2 batches."""
    ctx = smooth(transformer(1), feeds(5), "smooth-quant{samples=3}")
    assert ctx.report["smooth-quant"]["batches"] == 2


def test_alpha_outside_0_1_is_refused():
    for alpha in (-0.1, 1.5):
        with pytest.raises(PipelineError, match=r"alpha must be in \[0, 1\]"):
            PassManager(f"smooth-quant{{alpha={alpha}}}")


def test_needs_calibration_data_and_runs_before_observers():
    with pytest.raises(PassError, match="needs calibration data"):
        PassManager("smooth-quant").run(transformer(1), PassContext())
    with pytest.raises(PassError, match="before insert-observers"):
        PassManager("insert-observers,smooth-quant").run(transformer(1), PassContext(calibration_data=feeds(1)))


@pytest.mark.parametrize("reader", ["Relu", "Softmax", "Add"])
def test_value_also_read_by_a_non_linear_op_is_smoothed_only_through_a_mul(reader):
    """A post-LN model's residual Add reads the LayerNorm too: folding would change what it sees."""
    w = np.random.default_rng(4).standard_normal((HIDDEN, 8))
    gamma = np.ones(HIDDEN)
    gamma[[2, 9]] = 50.0
    data = feeds(2)
    model = single_ln(gamma, np.zeros(HIDDEN), w, also_read_by=reader)
    expected = outputs(model, data)
    ctx = smooth(model, data)
    assert ctx.report["smooth-quant"]["values_smoothed"] == 0 and ctx.report["smooth-quant"]["not_foldable"] == 1
    np.testing.assert_array_equal(weight_of(model, "mm"), w.astype(np.float32))

    ctx = smooth(model, data, "smooth-quant{insert_mul=true}")
    assert ctx.report["smooth-quant"]["muls_inserted"] == 1
    matmul, other = (next(n for n in model.graph.nodes if n.name == name) for name in ("mm", "other"))
    assert matmul.inputs[0].producer.op_type == "Mul"
    assert other.inputs[0].producer.op_type == "LayerNormalization"
    for want, got in zip(expected, outputs(model, data)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_graph_output_takes_a_mul_not_a_fold():
    """Folding into the LayerNorm would change a graph output; the Mul leaves it as it was."""
    g = Builder(seed=6)
    a = g.layernorm("x", "ln")
    y = g.op("MatMul", a, g.random("w", HIDDEN, 8), name="mm")
    data = feeds(2)
    model = g.model(("N", TOKENS, HIDDEN), [y, a])
    expected = outputs(model, data)
    assert smooth(model, data).report["smooth-quant"]["not_foldable"] == 1
    ctx = smooth(model, data, "smooth-quant{insert_mul=true}")
    assert ctx.report["smooth-quant"]["muls_inserted"] == 1
    for want, got in zip(expected, outputs(model, data)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
