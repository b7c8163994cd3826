"""The float models of tools/bench.py, built from code, and their calibration and evaluation data.

1. ResNet-50 (bottleneck blocks [3, 4, 6, 3], stride on the 3x3 as in torchvision's
   v1.5), MobileNetV2 (inverted residuals, ReLU6, no expansion conv where t=1) and
   BERT-base (12 post-norm layers, hidden 768, 12 heads, FFN 3072, sequence 128, word
   and position embeddings gathered from `input_ids`, an `attention_mask` input added to
   the scores as (1 - mask) * -10000, the last hidden state as output). A `Size` scales
   widths and shrinks the resolution, depth and sequence for a quick run.
2. Weights are random under `deterministic()` (golden_models.py): convolutions keep
   torch's init with random BatchNorm stats (folded into the Conv on export), BERT's
   embeddings are N(0, 0.02) as in its own init, its linear weights N(0, 1/fan_in) with
   zero biases (0.02 would let every sublayer shrink its input, leaving the last layers
   nearly nothing but the outliers; a trained BERT's sublayers keep O(1) outputs), and
   every LayerNorm adds +-10 to a few channels (OUTLIERS), ten times the unit scale of the
   rest: the residual stream then carries the steady outlier channels trained BERTs have
   (they settle near +-20 while the other channels stay below 1). Scaling a LayerNorm's
   weight instead would compound layer after layer, each LayerNorm re-normalizing the
   last one's outliers and multiplying them again.
3. Export: the classic exporter (`dynamo=False`, opset 17), weights inline, a dynamic
   "batch" axis on every input and the output.
4. Data: images are smooth (coarse noise upsampled and blurred, 8-bit steps, then
   normalized), token ids are random words between [CLS] and [SEP] with a random
   length and padding after it, masked out. Calibration and evaluation draw from
   different seeds. Each case is cached in a folder (model.onnx, calib-N.npz, eval-N.npz)
   and built only when a file is missing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from golden_models import CALIB_SEED, EVAL_SEED, OPSET, _blur, conv_bn, deterministic
from torch import nn

from qcompiler.passes.infra.progress import silenced

RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, first stride)
MOBILENETV2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1))  # (expansion t, channels c, repeats n, stride s)
OUTLIERS = (77, 308, 381)  # hidden channels (modulo the width) LayerNorms push to +-10
VOCAB = 30522
CLS, SEP, FIRST_WORD = 101, 102, 1000


@dataclass(frozen=True)
class Size:
    """How far a model is shrunk: channel widths times `width`, images `resolution` pixels square, BERT's depth."""

    width: float = 1.0
    resolution: int = 224
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    seq: int = 128
    vocab: int = VOCAB


FULL = Size()
QUICK = Size(width=0.25, resolution=64, layers=2, hidden=128, heads=2, seq=32, vocab=2000)


def _channels(c: int, width: float) -> int:
    return max(8, round(c * width / 8) * 8)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, plus the shortcut (projected when the shape changes)."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(*conv_bn(cin, width, 1), nn.ReLU(), *conv_bn(width, width, 3, stride), nn.ReLU(),
                                  *conv_bn(width, cout, 1))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    def __init__(self, size: Size, classes: int = 1000) -> None:
        super().__init__()
        stem = _channels(64, size.width)
        layers: list[nn.Module] = [*conv_bn(3, stem, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = stem
        for width, blocks, stride in RESNET50_STAGES:
            width = _channels(width, size.width)
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = 4 * width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class InvertedResidual(nn.Module):
    """1x1 expand (absent when t=1), depthwise 3x3, linear 1x1 project; Add when the shape allows."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        expand = [*conv_bn(cin, hidden, 1), nn.ReLU6()] if expansion != 1 else []
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(*expand, *conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
                                  *conv_bn(hidden, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, size: Size, classes: int = 1000) -> None:
        super().__init__()
        cin = _channels(32, size.width)
        layers: list[nn.Module] = [*conv_bn(3, cin, 3, 2), nn.ReLU6()]
        for expansion, c, repeats, stride in MOBILENETV2_BLOCKS:
            cout = _channels(c, size.width)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        last = _channels(1280, max(1.0, size.width))
        self.features = nn.Sequential(*layers, *conv_bn(cin, last, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BertLayer(nn.Module):
    """Post-norm encoder layer: masked multi-head self-attention, then a GELU FFN, each with Add+LayerNorm."""

    def __init__(self, size: Size) -> None:
        super().__init__()
        hidden = size.hidden
        self.heads, self.head_dim = size.heads, hidden // size.heads
        self.qkv = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out = nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = (p(x).reshape(batch, seq, self.heads, self.head_dim).transpose(1, 2) for p in self.qkv)
        scores = q @ k.transpose(-2, -1) / self.head_dim**0.5 + mask_bias
        mixed = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, seq, hidden)
        x = self.norm1(x + self.attn_out(mixed))
        return self.norm2(x + self.ffn(x))


class Bert(nn.Module):
    def __init__(self, size: Size) -> None:
        super().__init__()
        self.words = nn.Embedding(size.vocab, size.hidden)
        self.positions = nn.Embedding(size.seq, size.hidden)
        self.norm = nn.LayerNorm(size.hidden, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(size) for _ in range(size.layers))
        self._init(size.hidden)

    def _init(self, hidden: int) -> None:
        outliers = sorted({c % hidden for c in OUTLIERS})
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Embedding):
                    module.weight.normal_(0.0, 0.02)
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, module.in_features**-0.5)
                    module.bias.zero_()
                if isinstance(module, nn.LayerNorm):
                    module.bias[outliers] = torch.tensor([10.0, -10.0, 10.0][:len(outliers)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.words(input_ids) + self.positions(positions))
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


def smooth_images(count: int, seed: int, resolution: int) -> np.ndarray:
    """Smooth color images, 3 x resolution^2: coarse noise upsampled by 8 and blurred, 8-bit steps, normalized."""
    rng = np.random.default_rng(seed)
    cells = -(-resolution // 8)
    coarse = rng.standard_normal((count, 3, cells, cells))
    smooth = _blur(np.kron(coarse, np.ones((8, 8)))[..., :resolution, :resolution])
    smooth += 0.1 * rng.standard_normal(smooth.shape)
    pixels = np.round(np.clip(0.5 + 0.25 * smooth, 0, 1) * 255) / 255
    return ((pixels - 0.5) / 0.25).astype(np.float32)


def token_batch(count: int, seed: int, size: Size) -> dict[str, np.ndarray]:
    """[CLS] words [SEP] then padding; lengths from a quarter of the sequence to all of it."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_WORD % size.vocab, size.vocab, (count, size.seq))
    mask = np.zeros((count, size.seq), np.int64)
    for row, length in enumerate(rng.integers(max(3, size.seq // 4), size.seq + 1, count)):
        ids[row, 0], ids[row, length - 1], ids[row, length:] = CLS, SEP, 0
        mask[row, :length] = 1
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}


@dataclass(frozen=True)
class Spec:
    """A benchmark model: how to build it, its input names and output, and how to draw `count` samples."""

    build: Callable[[Size], nn.Module]
    inputs: tuple[str, ...]
    output: str
    samples: Callable[[int, int, Size], dict[str, np.ndarray]]


def _images(count: int, seed: int, size: Size) -> dict[str, np.ndarray]:
    return {"x": smooth_images(count, seed, size.resolution)}


SPECS: dict[str, Spec] = {
    "resnet50": Spec(ResNet50, ("x",), "logits", _images),
    "mobilenetv2": Spec(MobileNetV2, ("x",), "logits", _images),
    "bert": Spec(Bert, ("input_ids", "attention_mask"), "last_hidden_state", token_batch),
}


def case_tag(name: str, size: Size) -> str:
    """The cache folder's name: the Size fields the model uses (BERT ignores width and resolution, CNNs the rest)."""
    if name == "bert":
        return f"{name}-l{size.layers}-h{size.hidden}-s{size.seq}-v{size.vocab}"
    return f"{name}-w{size.width:g}-r{size.resolution}"


def export(name: str, size: Size) -> onnx.ModelProto:
    """Build the seeded module and export it (rule 3)."""
    spec = SPECS[name]
    with deterministic():
        module = spec.build(size).eval()
    example = spec.samples(1, EVAL_SEED, size)
    axes = {key: {0: "batch"} for key in (*spec.inputs, spec.output)}
    buffer = io.BytesIO()
    with silenced(), torch.no_grad():
        torch.onnx.export(module, tuple(torch.from_numpy(example[k]) for k in spec.inputs), buffer, dynamo=False,
                          opset_version=OPSET, input_names=list(spec.inputs), output_names=[spec.output],
                          dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


@dataclass(frozen=True)
class Case:
    """Files of one benchmark model: the float model, calibration and evaluation samples (.npz, axis 0)."""

    name: str
    model: Path
    calib: Path
    eval: Path


def prepare(name: str, size: Size, folder: Path, calib: int, evaluate: int) -> Case:
    """The cached case in `folder`/<tag>, exporting the model and drawing the samples only when missing (rule 4)."""
    spec = SPECS[name]
    home = folder / case_tag(name, size)
    home.mkdir(parents=True, exist_ok=True)
    case = Case(name, home / "model.onnx", home / f"calib-{calib}.npz", home / f"eval-{evaluate}.npz")
    if not case.model.exists():
        _write_atomic(case.model, lambda p: onnx.save_model(export(name, size), p))
    for path, count, seed in ((case.calib, calib, CALIB_SEED), (case.eval, evaluate, EVAL_SEED)):
        if not path.exists():
            _write_atomic(path, lambda p, n=count, s=seed: np.savez(p, **spec.samples(n, s, size)))
    return case


def stored_case(golden: Path, folder: Path, calib: int, evaluate: int) -> Case:
    """A golden case's model with the first `calib` rows of its calib.npz and `evaluate` rows of its inputs.npz."""
    home = folder / golden.name
    home.mkdir(parents=True, exist_ok=True)
    case = Case(golden.name, golden / "model.onnx", home / f"calib-{calib}.npz", home / f"eval-{evaluate}.npz")
    for path, source, count in ((case.calib, "calib.npz", calib), (case.eval, "inputs.npz", evaluate)):
        with np.load(golden / source) as rows:
            _write_atomic(path, lambda p, n=count, r=rows: np.savez(p, **{k: r[k][:n] for k in r.files}))
    return case


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside `path` and rename, so an interrupted run leaves no half file in the cache."""
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    write(partial)
    partial.replace(path)
