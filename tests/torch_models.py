"""Small seeded PyTorch models exported to ONNX, the inputs of the round-trip tests.

Every model goes through the classic TorchScript exporter (``dynamo=False``), pinned
to opset 20. In torch 2.13 the dynamo exporter handles all of them too (``torch.cond``
becomes an ``If``), but it takes 1-2 s per model plus seconds of one-off warm-up,
prints progress and writes weights to a side ``.data`` file unless told otherwise.
The classic exporter needs under 0.2 s per model, writes byte-identical files on every
run, and emits ``If`` from a ``torch.jit.script``-ed branch (it cannot trace
``torch.cond``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qcompiler.passes.infra.progress import silenced

OPSET = 20
MODULE_SEED = 0
FEED_SEED = 1234


@dataclass(frozen=True)
class ExportedModel:
    name: str
    path: pathlib.Path
    feeds: dict[str, np.ndarray]


class ConvBnPool(nn.Module):
    """CNN classifier; the exporter folds the first BatchNorm into its Conv.

    The second BatchNorm follows a ReLU, so it survives as a BatchNormalization node.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(16),
            nn.AvgPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                randomize_batch_norm(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def randomize_batch_norm(bn: nn.BatchNorm2d) -> None:
    """Fresh BatchNorm stats are 0/1 (an identity); random ones make it observable."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)


class ConvTranspose(nn.Module):
    """Stride-2 upsampling, then a depthwise and a grouped (groups=2) convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 4, 1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grouped(F.relu(self.depthwise(self.up(x))))


class MlpMatMul(nn.Module):
    """A bare weight MatMul (x @ W), then Linear-GELU-Linear.

    The input is 3-D, so the Linear layers export as MatMul+Add rather than Gemm.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 32) / 4)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x @ self.weight)))


class SelfAttention(nn.Module):
    """Multi-head self-attention spelled out op by op, optionally causal."""

    def __init__(self, hidden: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.causal = causal
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q, self.k, self.v))
        scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5
        if self.causal:
            future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        mixed = torch.softmax(scores, dim=-1) @ v
        return self.out(mixed.transpose(1, 2).reshape(batch, seq, hidden))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = t.shape
        return t.reshape(batch, seq, self.heads, self.head_dim).transpose(1, 2)


class EncoderBlock(nn.Module):
    """Transformer encoder block: post-norm (BERT style) or pre-norm (GPT style)."""

    def __init__(
        self, hidden: int, heads: int, pre_norm: bool = False, causal: bool = False
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = SelfAttention(hidden, heads, causal)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x))
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ffn(x))


class MhaBlock(nn.Module):
    """Library attention (nn.MultiheadAttention); it exports to a different op mix."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed, _ = self.mha(x, x, x, need_weights=False)
        return self.norm(x + mixed)


class ResizeConcatSplit(nn.Module):
    """Split, nearest and bilinear Resize, Concat, then a 3-way Split (chunk)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = torch.split(x, [2, 2], dim=1)
        a = F.interpolate(a, scale_factor=2, mode="nearest")
        b = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)
        c1, c2, c3 = torch.chunk(torch.cat([a, b, a * b], dim=1), 3, dim=1)
        return c1 + c2, c3


class Lstm(nn.Module):
    """Two stacked LSTM layers, returning the sequence and both final states."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, (h, c) = self.lstm(x)
        return y, h, c


class IfBranch(nn.Module):
    """Data-dependent branch; scripted, it exports as If with two subgraphs.

    Both subgraphs read weights that live in the outer graph's initializers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.then_fc = nn.Linear(8, 8)
        self.else_fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            y = self.then_fc(x)
        else:
            y = torch.relu(self.else_fc(x))
        return y + x


@dataclass(frozen=True)
class _Spec:
    build: Callable[[], nn.Module]
    example_shape: tuple[int, ...]
    outputs: tuple[str, ...] = ("y",)
    feed_shape: tuple[int, ...] | None = None  # set only when dims are symbolic
    dynamic_axes: dict[str, dict[int, str]] | None = None
    script: bool = False


_SPECS: dict[str, _Spec] = {
    "conv_bn_pool": _Spec(ConvBnPool, (2, 3, 16, 16)),
    "conv_transpose": _Spec(ConvTranspose, (1, 8, 8, 8)),
    "mlp_matmul": _Spec(MlpMatMul, (2, 5, 16)),
    "attention": _Spec(lambda: EncoderBlock(32, 4), (2, 6, 32)),
    "attention_mha": _Spec(MhaBlock, (2, 6, 32)),
    "resize_concat_split": _Spec(
        ResizeConcatSplit, (1, 4, 5, 5), outputs=("y0", "y1")
    ),
    "lstm": _Spec(Lstm, (2, 7, 8), outputs=("y", "h", "c")),
    "if_branch": _Spec(IfBranch, (3, 8), script=True),
    "symbolic_dims": _Spec(
        lambda: EncoderBlock(16, 2, pre_norm=True, causal=True),
        (2, 5, 16),
        feed_shape=(3, 7, 16),
        dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}},
    ),
}

MODEL_NAMES: tuple[str, ...] = tuple(_SPECS)


def _random_input(shape: tuple[int, ...]) -> np.ndarray:
    """One seed for example and feed: static models run on their export input."""
    return np.random.default_rng(FEED_SEED).standard_normal(shape, dtype=np.float32)


def build_module(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Eval-mode module with seeded weights, and the example inputs it exports with."""
    spec = _SPECS[name]
    torch.manual_seed(MODULE_SEED)
    module = spec.build().eval()
    return module, (torch.from_numpy(_random_input(spec.example_shape)),)


def export_model(name: str, directory: pathlib.Path) -> ExportedModel:
    """Write ``<directory>/<name>.onnx``, weights inline; return it with its feeds."""
    spec = _SPECS[name]
    module, example = build_module(name)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.onnx"
    with silenced():
        torch.onnx.export(
            torch.jit.script(module) if spec.script else module,
            example,
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=["x"],
            output_names=list(spec.outputs),
            dynamic_axes=spec.dynamic_axes,
        )
    feeds = {"x": _random_input(spec.feed_shape or spec.example_shape)}
    return ExportedModel(name, path, feeds)
