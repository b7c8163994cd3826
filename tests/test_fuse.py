"""The fuse pass keeps every model's outputs; what it fused or grouped is what it should be.

Outputs are compared in ONNX Runtime before and after the pass (rtol 1e-5, atol 1e-6)
on torch-built models: the bundled set, plus modules built here so that each pattern
meets what torch's classic exporter really emits (BN kept by exporting without constant
folding, LayerNorm and GELU at opsets with and without the fused op).
"""

from __future__ import annotations

import io
import math
import pathlib
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import run_onnx
from qcompiler import ir, passes
from torch_models import MODEL_NAMES, randomize_batch_norm, build_module

TEXT_CASES = pathlib.Path(__file__).parent / "passes" / "fuse"


def fuse(model: ir.Model, pipeline: str = "fuse") -> ir.Model:
    passes.PassManager(pipeline).run(model, passes.PassContext(instruments=[passes.Verifier()]))
    return model


def fuse_keeps_outputs(model: ir.Model, feeds: dict[str, np.ndarray]) -> ir.Model:
    before = run_onnx(ir.to_onnx(model), feeds)
    after = run_onnx(ir.to_onnx(fuse(model)), feeds)
    assert len(before) == len(after)
    for want, got in zip(before, after):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return model


def export(module: nn.Module, shape: tuple[int, ...], opset: int, keep_bn: bool = False) -> tuple[ir.Model, dict]:
    """Export with the classic exporter and import with the frontend's clean-up.

    `keep_bn` stops the exporter folding BN into the Conv itself. The clean-up folds the
    Identity nodes torch puts in front of initializers equal to another one (BN statistics
    equal to its affine parameters, a second LayerNorm's fresh gamma and beta).
    """
    torch.manual_seed(0)
    x = torch.randn(shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buffer, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], do_constant_folding=not keep_bn)
    model = ir.load_model(onnx.load_from_string(buffer.getvalue()), cleanup=True)
    return model, {"x": x.numpy()}


def ops(model: ir.Model) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.all_nodes())


def groups(model: ir.Model) -> Counter[str]:
    """Group label prefix -> number of distinct groups."""
    labels = {n.meta["group"] for n in model.graph.all_nodes() if "group" in n.meta}
    return Counter(label.split("#")[0] for label in labels)


# -- the bundled torch models ----------------------------------------------------------

BUNDLED_GROUPS = {
    "conv_bn_pool": {"conv-act": 2},  # its BN follows a Relu: nothing to fold
    "conv_transpose": {"conv-act": 1},
    "mlp_matmul": {"matmul-bias": 2},  # 3-D input: MatMul+Add grouped, not Gemm
    "attention": {"matmul-bias": 6},
    "attention_mha": {"matmul-bias": 1},  # the output projection; q/k/v are one packed MatMul
    "symbolic_dims": {"matmul-bias": 6},
    "if_branch": {"gemm-act": 1},  # inside the If's else branch
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bundled_models_keep_their_outputs(name, torch_exports):
    exported = torch_exports[name]
    model = fuse_keeps_outputs(ir.load_model(exported.path), exported.feeds)
    assert groups(model) == Counter(BUNDLED_GROUPS.get(name, {}))


# -- conv-bn, convtranspose-bn ---------------------------------------------------------


def conv_bn(conv: nn.Module, channels: int) -> nn.Module:
    bn = (nn.BatchNorm1d if isinstance(conv, nn.Conv1d) else nn.BatchNorm2d)(channels)
    randomize_batch_norm(bn)
    return nn.Sequential(conv, bn)


CONV_BN_CASES = {
    "grouped": (lambda: conv_bn(nn.Conv2d(4, 6, 3, groups=2, bias=False), 6), (2, 4, 8, 8)),
    "depthwise": (lambda: conv_bn(nn.Conv2d(6, 6, 3, padding=1, groups=6), 6), (2, 6, 8, 8)),
    "conv1d": (lambda: conv_bn(nn.Conv1d(4, 8, 3), 8), (2, 4, 16)),
    "transpose_grouped": (lambda: conv_bn(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), 6), (1, 4, 5, 5)),
    "transpose_depthwise": (
        lambda: conv_bn(nn.ConvTranspose2d(4, 8, 2, stride=2, groups=4, bias=False), 8), (1, 4, 5, 5)
    ),
}


@pytest.mark.parametrize("case", CONV_BN_CASES)
def test_conv_bn_folds(case):
    build, shape = CONV_BN_CASES[case]
    torch.manual_seed(1)
    model, feeds = export(build(), shape, opset=17, keep_bn=True)
    conv_ops = ops(model)["Conv"] + ops(model)["ConvTranspose"]
    assert ops(model)["BatchNormalization"] == 1
    fuse_keeps_outputs(model, feeds)
    assert ops(model)["BatchNormalization"] == 0
    assert ops(model)["Conv"] + ops(model)["ConvTranspose"] == conv_ops == len(model.graph.nodes)
    assert len(model.graph.constants) == 2  # folded weight and bias; the old ones are gone


# -- gemm-bias, matmul-bias, activations -----------------------------------------------


class Mlp2d(nn.Module):
    """Linear+ReLU (a Gemm), Linear without bias plus a bias (Gemm or MatMul, then Add), x @ W + b."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4, bias=False)
        self.bias = nn.Parameter(torch.randn(4))
        self.weight = nn.Parameter(torch.randn(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(F.relu(self.fc1(x))) + self.bias
        return F.hardsigmoid(y) + torch.clamp(x @ self.weight + self.bias, 0.0, 6.0)


def test_bias_folds_into_gemm_and_activations_group():
    torch.manual_seed(2)
    model, feeds = export(Mlp2d(), (5, 8), opset=17)
    fuse_keeps_outputs(model, feeds)
    assert ops(model)["MatMul"] == 0 and ops(model)["Gemm"] == 3
    assert ops(model)["Add"] == 1  # only the sum of the two branches is left
    assert groups(model) == {"gemm-act": 2}  # Relu and Clip, which ORT's integer Gemm absorbs, with their Gemm
    torch.manual_seed(2)
    model, _ = export(Mlp2d(), (5, 8), opset=17)
    fuse(model, "fuse{activations=all}")
    assert groups(model) == {"gemm-act": 3}  # ... and HardSigmoid too when every activation groups


# -- layernorm -------------------------------------------------------------------------


class HandLayerNorm(nn.Module):
    def __init__(self, hidden: int, square_by_mul: bool) -> None:
        super().__init__()
        self.square_by_mul = square_by_mul
        self.gamma = nn.Parameter(torch.rand(hidden) + 0.5)
        self.beta = nn.Parameter(torch.randn(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(-1, keepdim=True)
        square = centered * centered if self.square_by_mul else centered.pow(2)
        return centered / torch.sqrt(square.mean(-1, keepdim=True) + 1e-5) * self.gamma + self.beta


@pytest.mark.parametrize("opset", [16, 17, 18])
@pytest.mark.parametrize("square_by_mul", [False, True])
def test_hand_written_layernorm(opset, square_by_mul):
    torch.manual_seed(3)
    model, feeds = export(HandLayerNorm(32, square_by_mul), (2, 6, 32), opset)
    fuse_keeps_outputs(model, feeds)
    if opset >= 17:
        assert ops(model) == {"LayerNormalization": 1}
    else:
        assert ops(model)["LayerNormalization"] == 0 and groups(model) == {"layernorm": 1}


def test_transformer_block_at_opset_16_groups_layernorm_and_gelu():
    module, (example,) = build_module("attention")
    model, feeds = export(module, tuple(example.shape), opset=16)
    fuse_keeps_outputs(model, feeds)
    assert groups(model) == {"layernorm": 2, "gelu": 1, "matmul-bias": 6}
    assert ops(model)["LayerNormalization"] == ops(model)["Gelu"] == 0


# -- gelu ------------------------------------------------------------------------------


class HandGelu(nn.Module):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.approximate == "tanh":
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))
        return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))


class TorchGelu(nn.Module):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("module", [HandGelu, TorchGelu])
@pytest.mark.parametrize("opset", [17, 20])
def test_gelu(opset, module, approximate):
    model, feeds = export(module(approximate), (4, 64), opset)
    fuse_keeps_outputs(model, feeds)
    if opset >= 20:
        assert [(n.op_type, n.attributes["approximate"].value) for n in model.graph.nodes] == [("Gelu", approximate)]
    else:
        assert ops(model)["Gelu"] == 0 and groups(model) == {"gelu": 1}


# -- options and statistics ------------------------------------------------------------


def test_unknown_pattern_names_are_rejected_with_the_known_ones():
    with pytest.raises(passes.PipelineError, match="unknown pattern 'conv-relu'; known: conv-bn, convtranspose-bn, "):
        passes.PassManager("fuse{patterns=conv-bn,conv-relu}")


def test_selected_patterns_only():
    model = fuse(ir.parse_file(TEXT_CASES / "gemm_bias_act.qir"), "fuse{patterns=gemm-act,matmul-bias}")
    assert ops(model)["Add"] == 2  # gemm-bias did not run, so the Gemm's Add stays...
    assert groups(model) == {"matmul-bias": 1}  # ...and the Gemm is read by the Add, not the LeakyRelu


def test_statistics_count_rewrites_per_pattern():
    fuse_pass = passes.get_pass("fuse")()
    model = ir.parse_file(TEXT_CASES / "gemm_bias_act.qir")
    assert fuse_pass.run(model, passes.PassContext(target=passes.Target.named("tensorrt")))  # groups every activation
    assert fuse_pass.stats == {"gemm-bias": 1, "gemm-act": 1, "matmul-bias": 1, "add-act": 1}
    again = passes.get_pass("fuse")()
    assert not again.run(model, passes.PassContext(target=passes.Target.named("tensorrt"))) and not again.stats
