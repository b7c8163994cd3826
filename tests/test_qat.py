"""Quantization-aware training: prepare_qat mirrors compile's placement, and the fine-tuned scales are the ones emitted.

The trained digits CNN of golden/digits_cnn (its stored weights, loaded into the
DigitsCnn it was exported from) is quantized twice: static PTQ by compile, and
prepare_qat + three epochs of fine-tuning on the digits it was trained on + export_qat
+ compile with the pairs kept. Accuracy is top-1 on the stored test split, computed here
from ONNX Runtime's outputs.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import run_onnx
from onnx import numpy_helper

import qcompiler
from qcompiler import ir
from qcompiler.passes.transforms.fake_quant import fold_quantized_constants
from qcompiler.qat import (
    ActivationQuant,
    Follow,
    Quantized,
    WeightQuant,
    export_qat,
    prepare_qat,
)
from qcompiler.passes import Target

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "golden" / "digits_cnn"
sys.path.insert(0, str(ROOT / "tools"))
from golden_models import DIGITS_TRAIN, DigitsCnn, deterministic  # noqa: E402

EPOCHS, LEARNING_RATE = 3, 1e-4
DYNAMIC = {"x": {0: torch.export.Dim("batch")}}


def _trained_digits() -> DigitsCnn:
    module = DigitsCnn()
    weights = onnx.load(DIGITS / "model.onnx").graph.initializer
    module.load_state_dict({t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in weights})
    return module.eval()


def _fine_tune(module: torch.nn.Module) -> None:
    """Adam over the training split the float model was trained on, batches of 64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images[:DIGITS_TRAIN] / 16.0).astype(np.float32)[:, None])
    y = torch.from_numpy(digits.target[:DIGITS_TRAIN].astype(np.int64))
    optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)
    order = torch.Generator().manual_seed(0)
    module.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(DIGITS_TRAIN, generator=order).split(64):
            optimizer.zero_grad()
            F.cross_entropy(module(x[batch]), y[batch]).backward()
            optimizer.step()
    module.eval()


def _accuracy(model: ir.Model, images: np.ndarray, labels: np.ndarray) -> float:
    logits = run_onnx(ir.to_onnx(model), {"x": images})[0]
    return float(np.mean(logits.argmax(axis=1) == labels))


@pytest.fixture(scope="module")
def digits():
    """Float module, PTQ result, fine-tuned prepared module, its compiled QDQ model, and the test split."""
    with np.load(DIGITS / "inputs.npz") as inputs, np.load(DIGITS / "labels.npz") as labels:
        images, answers = inputs["x"], labels["labels"]
    float_module = _trained_digits()
    example = (torch.from_numpy(images[:8]),)
    with deterministic():
        ptq = qcompiler.compile(float_module, DIGITS / "calib.npz", eval={"x": images}, example_inputs=example,
                                dynamic_shapes=DYNAMIC)
        prepared = prepare_qat(float_module, example, dynamic_shapes=DYNAMIC)
        _fine_tune(prepared)
        exported = export_qat(prepared, example, dynamic_shapes=DYNAMIC)
    qat = qcompiler.compile(exported, eval={"x": images}, on_quantized="keep")  # adopts: no calibration data
    return float_module, ptq, prepared, qat, images, answers


def test_prepare_mirrors_the_compilers_placement(digits):
    _, _, prepared, _, _, _ = digits
    net = prepared.net
    assert prepared.qat_plan.not_mirrored == []
    # the input quantized by the first Conv; each Conv+ReLU group's output after the ReLU; the Linear's output
    assert isinstance(net[0], Quantized) and isinstance(net[0].input_quant, ActivationQuant)
    assert net[0].output_quant is None and not isinstance(net[2], Quantized)  # inside the conv-act groups
    assert all(isinstance(net[i].output_quant, ActivationQuant) for i in (1, 3, 7))
    # MaxPool and Flatten follow the second ReLU's parameters
    assert net[4].output_quant.leader is net[3].output_quant is net[5].output_quant.leader
    reduce_range = Target.named("ort-cpu").reduce_range[0]
    for conv in (net[0].module, net[2], net[7].module):
        (step,) = conv.parametrizations.weight
        assert isinstance(step, WeightQuant) and step.axis == 0 and step.reduce_range == reduce_range


def test_fake_quant_matches_onnx_quantize_linear():
    """ActivationQuant rounds as ONNX's QuantizeLinear/DequantizeLinear with from_range's parameters."""
    quant = ActivationQuant().train()
    x = torch.linspace(-1.3, 4.1, 997)
    y = quant(x).numpy()
    params = ir.QuantParams.from_range(-1.3, 4.1, ir.DType.UINT8, symmetric=False)
    codes = np.clip(np.rint(x.numpy() / params.scale) + params.zero_point, 0, 255)
    np.testing.assert_allclose(y, (codes - params.zero_point) * params.scale, atol=1e-6)
    assert np.isclose(float(Follow(quant).eval()(torch.tensor(0.5))), float(quant.eval()(torch.tensor(0.5))))


def test_emitted_scales_are_the_learned_ones(digits):
    _, _, prepared, qat, _, _ = digits
    graph = qat.model.graph
    net = prepared.net
    computes = [n for n in graph.nodes if n.op_type in ("Conv", "Gemm")]
    owners = [prepared.get_submodule(n.meta["module"]) for n in computes]
    assert owners == [net[0].module, net[2], net[7].module]
    for node, owner in zip(computes, owners):
        dq = node.inputs[1].producer
        assert dq.op_type == "DequantizeLinear" and dq.inputs[0].dtype == ir.DType.INT8 and dq.inputs[0].is_const
        scale = owner.parametrizations.weight[0].scale.numpy()
        np.testing.assert_array_equal(dq.inputs[1].const, scale)
        codes, column = dq.inputs[0].const, scale.reshape(-1, *[1] * (dq.inputs[0].const.ndim - 1))
        trained = owner.parametrizations.weight.original.detach().numpy()
        np.testing.assert_array_equal(codes, np.clip(np.rint(trained / column), -128, 127))  # ONNX QuantizeLinear
        # torch rounds x * (1 / scale): a channel's extreme, at code 63.5 in reduce range, may round the other way
        assert np.all(np.abs(codes * column - owner.weight.detach().numpy()) <= column * 1.001)
    learned = [net[0].input_quant, net[1].output_quant, net[3].output_quant]
    for node, quant in zip(computes, learned):
        dq = node.inputs[0].producer
        assert float(dq.inputs[1].const) == float(quant.scale) and int(dq.inputs[2].const) == int(quant.zero_point)
    # nothing calibrated (no data was given): every activation pair carries a learned scale
    activation_scales = {float(n.inputs[1].const) for n in graph.nodes
                         if n.op_type == "DequantizeLinear" and not n.inputs[0].is_const}
    assert activation_scales == {float(q.scale) for q in prepared.modules() if isinstance(q, ActivationQuant)}


def test_qat_accuracy_and_integer_kernels(digits):
    float_module, ptq, prepared, qat, images, labels = digits
    with torch.no_grad():
        float_accuracy = float(np.mean(float_module(torch.from_numpy(images)).argmax(1).numpy() == labels))
        fake_quant_logits = prepared(torch.from_numpy(images)).numpy()
    ptq_accuracy = _accuracy(ptq.model, images, labels)
    qat_accuracy = _accuracy(qat.model, images, labels)
    print(f"digits top-1: float {float_accuracy:.4f}, PTQ {ptq_accuracy:.4f}, QAT {qat_accuracy:.4f}")
    assert float_accuracy >= 0.96
    assert qat_accuracy >= ptq_accuracy - 0.005  # measured: PTQ 0.9700, QAT 0.9733
    # ONNX Runtime computes what the fake-quantized module computes
    ort_logits = run_onnx(ir.to_onnx(qat.model), {"x": images})[0]
    assert np.mean(ort_logits.argmax(1) == fake_quant_logits.argmax(1)) >= 0.99
    kernels = qat.report.kernels
    assert kernels.op_counts.get("com.microsoft::QLinearConv", 0) + kernels.op_counts.get("QLinearConv", 0) == 2
    assert kernels.integer_share == 1.0 and not kernels.float_nodes


def test_exporters_emit_quantize_dequantize_pairs(digits):
    """Both exporters turn the fake quantization into Q/DQ pairs; constant Qs fold to int8 initializers."""
    _, _, prepared, _, images, _ = digits
    example = (torch.from_numpy(images[:4]),)
    model = export_qat(prepared, example, exporter="classic", dynamic_shapes={"x": {0: "batch"}})
    ops = [n.op_type for n in model.graph.nodes]
    assert ops.count("QuantizeLinear") == 6 and ops.count("DequantizeLinear") == 9
    weights = [v for v in model.graph.constants if v.dtype == ir.DType.INT8 and v.quant is not None]
    assert len(weights) == 3 and fold_quantized_constants(model) == 0  # already folded
    logits = run_onnx(ir.to_onnx(model), {"x": images})[0]
    expected = prepared(torch.from_numpy(images)).detach().numpy()
    step = float(prepared.net[7].output_quant.scale)
    assert np.abs(logits - expected).max() <= 2 * step  # measured: one output step (ORT's integer rounding)
    assert np.mean(logits.argmax(1) == expected.argmax(1)) >= 0.99


def test_export_refuses_ranges_never_observed(digits):
    _, _, prepared, _, images, _ = digits
    unseen = copy.deepcopy(prepared)
    unseen.net[1].output_quant.range.fill_(math.inf)
    with pytest.raises(ValueError, match="net.1.output_quant never saw a batch"):
        export_qat(unseen, (torch.from_numpy(images[:4]),))


def test_recipe_settings_reach_the_placement():
    """Per-tensor weights without reduce_range, and an excluded Linear, as compile would do them."""
    recipe = {"passes": {"fold-weights": {"per_channel": False, "reduce_range": False}},
              "overrides": {"exclude": ["net.7/Gemm"]}}
    prepared = prepare_qat(DigitsCnn(), (torch.zeros(2, 1, 8, 8),), recipe)
    assert prepared.qat_plan.weights == {"net.0.weight": None, "net.2.weight": None}
    assert not prepared.qat_plan.not_mirrored
    net = prepared.net
    assert not isinstance(net[7], Quantized) and not isinstance(net[5], Quantized)  # read only by the float Linear
    assert isinstance(net[4].output_quant, Follow)
    step = net[0].module.parametrizations.weight[0]
    assert step.scale.shape == () and not step.reduce_range
    weight = net[0].module.parametrizations.weight.original.detach()
    np.testing.assert_allclose(float(step.scale), float(weight.abs().max()) / 127, rtol=1e-6)
