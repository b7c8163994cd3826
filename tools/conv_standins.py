"""Stand-ins for trained conv and OCR nets: MobileNetV3-small, a DB text detector and a CRNN, trained briefly.

Quantization error depends on what the activations look like, and random weights look
nothing like a trained net's. Nothing downloads weights here, so these nets are written as
their papers draw them and trained for about a minute on synthetic tasks drawn in numpy,
enough that each does its task and its activations carry what training puts there; at the
"standard" size, measured on the evaluation samples: HardSwish outputs reaching 9-29 layer
by layer, squeeze-and-excitation gates spread over (0, 1), DB maps with 98% of pixels
below 0.1 or above 0.9, CTC logits whose argmax is the blank on 73% of the columns.

1. The graphs (input "x", a dynamic "batch" axis on the input and the output):
   a. `mobilenetv3`: MobileNetV3-small (Howard et al. 2019, its table 2): a HardSwish stem,
      eleven inverted residuals with depthwise 3x3/5x5 convs, ReLU or HardSwish, and
      squeeze-and-excitation (GlobalAveragePool -> 1x1 Conv -> ReLU -> 1x1 Conv ->
      HardSigmoid -> Mul) where the table has it, a 1x1 HardSwish conv, pooling, a
      HardSwish Linear and the classifier; 3 x 64 x 64 images in, `logits` [batch, 8] out.
   b. `db-detector`: DBNet's shape (Liao et al. 2020): a four-stage conv backbone (strides
      4-32), an FPN adding nearest-upsampled (Resize) coarser levels to 1x1 laterals, each
      level brought to stride 4 by bilinear Resize and Concat, and DB's probability head:
      3x3 Conv -> BN -> ReLU -> ConvTranspose x2 -> BN -> ReLU -> ConvTranspose x2 ->
      Sigmoid; 3 x 64 x 64 in, `probability` [batch, 1, 64, 64] out.
   c. `crnn`: CRNN (Shi et al. 2015): a conv stack whose pools collapse the height of a
      1 x 32 x 128 text line to 1, a bidirectional LSTM over the 32 columns and a Linear to
      per-column `logits` [batch, 32, 11] (class 0 is CTC's blank, 1-10 the digits 0-9).
   BatchNorm after every conv but the last; the exporter folds it into each Conv, and the
   one after the head's first ConvTranspose stays a BatchNormalization, as in exported DBNets.
2. The tasks, drawn by numpy from a seed per use: shapes and textures to classify (disc,
   ring, rotated square, triangle, cross, horizontal and vertical stripes, checkerboard, in
   random colors on smooth noise); text boxes (rows of glyph-like blocks on a plain patch)
   to segment, among distractor discs, the label being each box's rectangle; strings of
   3-7 digits rendered from a 5 x 7 bitmap font at 3x with random spacing, offset, a
   pixel of wobble per glyph, contrast, smooth stains and noise, the label being the digits.
3. Training: Adam with a one-cycle learning rate (peak 2e-3) on fresh batches drawn from
   FIT_SEED (neither calibration's nor evaluation's), a fixed number of steps per size
   (SIZES), under golden_models.deterministic() (seeded, one thread); cross entropy,
   BCE + dice, and CTC loss. 40-80 s per net at the "standard" size on an idle core;
   "tiny" trains for seconds, for tests.
4. Export: the classic TorchScript exporter (golden_models.export: `dynamo=False`, opset
   17), in eval mode, weights inline.
5. Task measures (`score`), each of a model's outputs against a reference (the float
   model's outputs, or the labels):
   a. `mobilenetv3`: top-1 agreement, the share of samples whose argmax matches.
   b. `db-detector`: F1 of the thresholded map (p > 0.5) over all pixels,
      2 TP / (2 TP + FP + FN).
   c. `crnn`: character accuracy of greedy CTC decoding (argmax per column, repeats
      collapsed, blanks dropped), 1 - sum of edit distances / sum of reference lengths.
6. `prepare` caches each net in a work folder (<folder>/conv-<name>-<size>/: model.onnx,
   calib-N.npz, eval-N.npz and labels-N.npz, the evaluation samples' labels), so reruns
   skip the training; calibration and evaluation samples come from CALIB_SEED and EVAL_SEED.

    python tools/conv_standins.py [--models mobilenetv3 db-detector crnn] [--size standard|tiny] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from bench_models import Case, _write_atomic
from golden_models import CALIB_SEED, EVAL_SEED, FIT_SEED, _blur, deterministic, export
from torch import nn

SHAPES = ("disc", "ring", "square", "triangle", "cross", "h-stripes", "v-stripes", "checker")
IMAGE = 64
LINE_HEIGHT, LINE_WIDTH = 32, 128
BLANK = 0
DIGIT_FONT = (  # 5 x 7 bitmaps, one string of 7 rows of 5 bits per digit
    "01110100011001110101110011000101110", "00100011000010000100001000010001110",
    "01110100010000100010001000100011111", "11111000100010000010000011000101110",
    "00010001100101010010111110001000010", "11111100001111000001000011000101110",
    "00110010001000011110100011000101110", "11111000010001000100010000100001000",
    "01110100011000101110100011000101110", "01110100011000101111000010001001100",
)
GLYPH_SCALE = 3
DIGITS_PER_LINE = (3, 7)


@dataclass(frozen=True)
class Size:
    """How big a stand-in is built and how long it trains."""

    width: float
    steps: int
    batch: int


SIZES = {
    "standard": {"mobilenetv3": Size(1.0, 600, 32), "db-detector": Size(1.0, 1200, 16), "crnn": Size(0.5, 1200, 16)},
    "tiny": {"mobilenetv3": Size(0.25, 3, 8), "db-detector": Size(0.25, 3, 4), "crnn": Size(0.25, 3, 8)},
}


def _channels(c: float, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


# -- 1a. MobileNetV3-small ---------------------------------------------------------------------

# (kernel, expanded, out, squeeze-excite, activation, stride), the paper's table 2
MOBILENETV3_SMALL = ((3, 16, 16, True, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 2), (3, 88, 24, False, nn.ReLU, 1),
                     (5, 96, 40, True, nn.Hardswish, 2), (5, 240, 40, True, nn.Hardswish, 1),
                     (5, 240, 40, True, nn.Hardswish, 1), (5, 120, 48, True, nn.Hardswish, 1),
                     (5, 144, 48, True, nn.Hardswish, 1), (5, 288, 96, True, nn.Hardswish, 2),
                     (5, 576, 96, True, nn.Hardswish, 1), (5, 576, 96, True, nn.Hardswish, 1))


class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> 1x1 Conv -> ReLU -> 1x1 Conv -> HardSigmoid, the gate multiplied in."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _channels(channels / 4, 1.0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1x1 expand (absent when nothing expands), depthwise k x k, squeeze-excite, linear 1x1 project, residual."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, excite: bool, act: type[nn.Module],
                 stride: int) -> None:
        super().__init__()
        expand = [_conv_bn(cin, expanded, 1, act=act)] if expanded != cin else []
        self.body = nn.Sequential(*expand, _conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act),
                                  *([SqueezeExcite(expanded)] if excite else []), _conv_bn(expanded, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV3Small(nn.Module):
    def __init__(self, width: float, classes: int = len(SHAPES)) -> None:
        super().__init__()
        cin = _channels(16, width)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 2, act=nn.Hardswish)]
        for kernel, expanded, cout, excite, act, stride in MOBILENETV3_SMALL:
            cout = _channels(cout, width)
            layers.append(InvertedResidual(cin, kernel, _channels(expanded, width), cout, excite, act, stride))
            cin = cout
        last = _channels(576, width)
        self.features = nn.Sequential(*layers, _conv_bn(cin, last, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        hidden = _channels(1024, width)
        self.classifier = nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# -- 1b. DB text detector ----------------------------------------------------------------------


class DBDetector(nn.Module):
    """Backbone (strides 4, 8, 16, 32), FPN (nearest top-down, bilinear to stride 4, Concat), DB's probability head."""

    def __init__(self, width: float) -> None:
        super().__init__()
        stages = [_channels(c, width) for c in (16, 32, 64, 96)]
        inner = _channels(64, width)
        self.stem = _conv_bn(3, _channels(16, width), 3, 2)
        cin = _channels(16, width)
        self.stages = nn.ModuleList()
        for cout in stages:
            self.stages.append(nn.Sequential(_conv_bn(cin, cout, 3, 2), _conv_bn(cout, cout, 3)))
            cin = cout
        self.laterals = nn.ModuleList(nn.Conv2d(c, inner, 1, bias=False) for c in stages)
        self.smooth = nn.ModuleList(nn.Conv2d(inner, inner // 4, 3, padding=1, bias=False) for _ in stages)
        self.head = nn.Sequential(_conv_bn(inner, inner // 4, 3), nn.ConvTranspose2d(inner // 4, inner // 4, 2, 2),
                                  nn.BatchNorm2d(inner // 4), nn.ReLU(), nn.ConvTranspose2d(inner // 4, 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        levels = []
        for stage in self.stages:
            x = stage(x)
            levels.append(x)
        merged = [lateral(level) for lateral, level in zip(self.laterals, levels)]
        for i in range(len(merged) - 2, -1, -1):  # top-down: each level adds the coarser one, nearest-upsampled
            merged[i] = merged[i] + F.interpolate(merged[i + 1], scale_factor=2.0, mode="nearest")
        outs = [smooth(level) for smooth, level in zip(self.smooth, merged)]
        outs = [outs[0]] + [F.interpolate(out, scale_factor=2.0 ** i, mode="bilinear", align_corners=False)
                            for i, out in enumerate(outs[1:], start=1)]
        return torch.sigmoid(self.head(torch.cat(outs, dim=1)))


# -- 1c. CRNN ----------------------------------------------------------------------------------


class CRNN(nn.Module):
    """Conv stack to one row of 32 columns, a bidirectional LSTM over the columns, per-column class logits."""

    def __init__(self, width: float, classes: int = 1 + len(DIGIT_FONT)) -> None:
        super().__init__()
        c = [_channels(v, width) for v in (32, 64, 128, 128, 192)]
        self.convs = nn.Sequential(
            _conv_bn(1, c[0]), nn.MaxPool2d(2),                  # 16 x 64
            _conv_bn(c[0], c[1]), nn.MaxPool2d(2),               # 8 x 32
            _conv_bn(c[1], c[2]), _conv_bn(c[2], c[3]), nn.MaxPool2d((2, 1)),  # 4 x 32
            _conv_bn(c[3], c[4]), nn.MaxPool2d((2, 1)),          # 2 x 32
            nn.Conv2d(c[4], c[4], (2, 1), bias=False), nn.BatchNorm2d(c[4]), nn.ReLU(),  # 1 x 32
        )
        hidden = _channels(96, width)
        self.rnn = nn.LSTM(c[4], hidden, batch_first=True, bidirectional=True)
        self.classify = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = self.convs(x).squeeze(2).permute(0, 2, 1)  # [batch, 32, channels]
        return self.classify(self.rnn(columns)[0])


# -- 2. the tasks' data ------------------------------------------------------------------------


def _backgrounds(rng: np.random.Generator, count: int, channels: int, height: int, width: int) -> np.ndarray:
    """Smooth noise of random contrast and cast (golden_models' blur), roughly in [-1, 1]."""
    cell = 8
    coarse = rng.standard_normal((count, channels, -(-height // cell), -(-width // cell)))
    smooth = _blur(np.kron(coarse, np.ones((cell, cell)))[..., :height, :width])
    return smooth * rng.uniform(0.2, 0.6, (count, 1, 1, 1)) + rng.normal(0, 0.4, (count, channels, 1, 1))


def _shape_mask(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One IMAGE x IMAGE mask of shape `kind` at a random place, size and (where it has one) angle."""
    r = rng.uniform(10, 20)
    cy, cx = rng.uniform(r + 2, IMAGE - r - 2, 2)
    yy, xx = np.mgrid[:IMAGE, :IMAGE].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    angle = rng.uniform(0, math.pi / 2)
    u, v = dx * math.cos(angle) + dy * math.sin(angle), -dx * math.sin(angle) + dy * math.cos(angle)
    patch = (np.abs(dx) < r * 0.8) & (np.abs(dy) < r * 0.8)
    period = rng.uniform(4, 7)
    masks = {
        "disc": lambda: dx**2 + dy**2 < r**2,
        "ring": lambda: ((dx**2 + dy**2) < r**2) & ((dx**2 + dy**2) > (0.55 * r) ** 2),
        "square": lambda: (np.abs(u) < 0.75 * r) & (np.abs(v) < 0.75 * r),
        "triangle": lambda: (dy > -r) & (dy < 0.7 * r) & (np.abs(dx) < (dy + r) * 0.55),
        "cross": lambda: ((np.abs(dx) < r / 4) & (np.abs(dy) < r)) | ((np.abs(dy) < r / 4) & (np.abs(dx) < r)),
        "h-stripes": lambda: patch & (np.sin(2 * math.pi * dy / period) > 0),
        "v-stripes": lambda: patch & (np.sin(2 * math.pi * dx / period) > 0),
        "checker": lambda: patch & ((np.floor(dx / (period / 2)) + np.floor(dy / (period / 2))) % 2 == 0),
    }
    return masks[kind]()


def _to_pixels(x: np.ndarray) -> np.ndarray:
    """8-bit steps, then normalized as bench_models.smooth_images does: (p - 0.5) / 0.25."""
    pixels = np.round(np.clip(0.5 + 0.25 * x, 0, 1) * 255) / 255
    return ((pixels - 0.5) / 0.25).astype(np.float32)


def shape_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` 3 x 64 x 64 images of one SHAPES kind each, and their class indices."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), count)
    images = _backgrounds(rng, count, 3, IMAGE, IMAGE)
    for image, label in zip(images, labels):
        mask = _shape_mask(SHAPES[label], rng)
        color = rng.normal(0, 1.2, (3, 1, 1))
        color += np.sign(color.mean() - image.mean() + 1e-9) * 0.8  # keep the shape apart from its background
        image[:] = np.where(mask, color, image)
    images += rng.uniform(0.02, 0.15) * rng.standard_normal(images.shape)
    return _to_pixels(images), labels.astype(np.int64)


def text_box_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` 3 x 64 x 64 scenes of 1-4 text boxes and 0-2 plain discs, and each box's rectangle as a 0/1 mask."""
    rng = np.random.default_rng(seed)
    images = _backgrounds(rng, count, 3, IMAGE, IMAGE)
    masks = np.zeros((count, 1, IMAGE, IMAGE), np.float32)
    yy, xx = np.mgrid[:IMAGE, :IMAGE]
    for image, mask in zip(images, masks):
        for _ in range(rng.integers(0, 3)):  # distractors: not text
            r, (cy, cx) = rng.uniform(3, 8), rng.uniform(0, IMAGE, 2)
            image[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.normal(0, 1.2, (3, 1))
        for _ in range(rng.integers(1, 5)):
            height, width = int(rng.integers(6, 12)), int(rng.integers(14, 40))
            top, left = int(rng.integers(0, IMAGE - height)), int(rng.integers(0, IMAGE - width))
            paper = rng.normal(0, 1.0, (3, 1, 1))
            ink = paper - np.sign(paper.mean() + 1e-9) * rng.uniform(1.2, 2.0)
            cell = int(rng.integers(2, 4))
            glyphs = rng.random((-(-height // cell), -(-width // cell))) < 0.45
            glyphs = np.kron(glyphs, np.ones((cell, cell), bool))[:height, :width]
            glyphs[[0, -1], :] = glyphs[:, [0, -1]] = False  # a margin of paper around the ink
            image[:, top:top + height, left:left + width] = np.where(glyphs, ink, paper)
            mask[0, top:top + height, left:left + width] = 1.0
    images += rng.uniform(0.02, 0.15) * rng.standard_normal(images.shape)
    return _to_pixels(images), masks


def _glyph(digit: int) -> np.ndarray:
    bits = np.array([int(b) for b in DIGIT_FONT[digit]], bool).reshape(7, 5)
    return np.kron(bits, np.ones((GLYPH_SCALE, GLYPH_SCALE), bool))


def text_lines(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` 1 x 32 x 128 lines of 3-7 rendered digits, and the digits as classes 1-10, padded with BLANK."""
    rng = np.random.default_rng(seed)
    lines = np.zeros((count, 1, LINE_HEIGHT, LINE_WIDTH))
    labels = np.full((count, DIGITS_PER_LINE[1]), BLANK, np.int64)
    glyph_h, glyph_w = 7 * GLYPH_SCALE, 5 * GLYPH_SCALE
    for line, label in zip(lines, labels):
        digits = rng.integers(0, len(DIGIT_FONT), rng.integers(DIGITS_PER_LINE[0], DIGITS_PER_LINE[1] + 1))
        gaps = rng.integers(1, 4, len(digits))
        total = int(len(digits) * glyph_w + gaps.sum())
        left = int(rng.integers(0, LINE_WIDTH - total + 1))
        baseline = int(rng.integers(1, LINE_HEIGHT - glyph_h))
        paper, ink = rng.uniform(-1.5, 0.5), rng.uniform(0.6, 2.5)
        line[:] = paper
        for digit, gap in zip(digits, gaps):
            top = baseline + int(rng.integers(-1, 2))  # each glyph wobbles a pixel off the baseline
            line[0, top:top + glyph_h, left:left + glyph_w][_glyph(int(digit))] = paper + ink
            left += glyph_w + int(gap)
        label[:len(digits)] = digits + 1
    lines += 0.5 * _backgrounds(rng, count, 1, LINE_HEIGHT, LINE_WIDTH)  # stains and uneven light
    lines = _blur(lines, passes=1) + rng.uniform(0.05, 0.4) * rng.standard_normal(lines.shape)
    return _to_pixels(lines), labels


# -- 5. task measures --------------------------------------------------------------------------


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of samples whose argmax equals the reference: class indices, or logits whose argmax is taken."""
    want = reference.argmax(axis=-1) if reference.ndim == logits.ndim else reference
    return float((logits.argmax(axis=-1) == want).mean())


def mask_f1(predicted: np.ndarray, reference: np.ndarray) -> float:
    """F1 of two 0/1 masks over all their pixels, 2 TP / (2 TP + FP + FN); 1 when both are empty."""
    predicted, reference = predicted.astype(bool), reference.astype(bool)
    hits = 2 * np.count_nonzero(predicted & reference)
    wrong = np.count_nonzero(predicted ^ reference)
    return 1.0 if hits + wrong == 0 else hits / (hits + wrong)


def ctc_greedy(logits: np.ndarray) -> list[list[int]]:
    """Per sample of [batch, time, classes]: the argmax per column, repeats collapsed, then BLANKs dropped."""
    decoded = []
    for best in logits.argmax(axis=-1):
        collapsed = best[np.r_[True, best[1:] != best[:-1]]]
        decoded.append([int(c) for c in collapsed if c != BLANK])
    return decoded


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, each costing 1."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def character_accuracy(predicted: list[list[int]], reference: list[list[int]]) -> float:
    """1 - (sum of edit distances) / (sum of reference lengths); below 0 when predictions add more than they match."""
    return 1.0 - sum(edit_distance(p, r) for p, r in zip(predicted, reference)) / max(1, sum(map(len, reference)))


def _label_strings(labels: np.ndarray) -> list[list[int]]:
    return [[int(c) for c in row if c != BLANK] for row in labels]


# -- the stand-ins -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A stand-in: its net, its data (inputs, labels), its training loss and its task measure (rule 5)."""

    build: Callable[[float], nn.Module]
    output: str
    samples: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    measure: str
    compare_outputs: Callable[[np.ndarray, np.ndarray], float]
    compare_labels: Callable[[np.ndarray, np.ndarray], float]


def _segmentation_loss(probability: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE plus dice, as DB trains its probability map."""
    bce = F.binary_cross_entropy(probability, mask)
    dice = 1 - 2 * (probability * mask).sum() / (probability.sum() + mask.sum() + 1e-6)
    return bce + dice


def _ctc_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_probs = logits.log_softmax(-1).permute(1, 0, 2)  # [time, batch, classes]
    lengths = (labels != BLANK).sum(1)
    targets = labels[labels != BLANK]
    times = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long)
    return F.ctc_loss(log_probs, targets, times, lengths, blank=BLANK, zero_infinity=True)


TASKS: dict[str, Task] = {
    "mobilenetv3": Task(MobileNetV3Small, "logits", shape_images, F.cross_entropy, "top-1",
                        top1_agreement, top1_agreement),
    "db-detector": Task(DBDetector, "probability", text_box_images, _segmentation_loss, "F1",
                        lambda p, ref: mask_f1(p > 0.5, ref > 0.5), lambda p, labels: mask_f1(p > 0.5, labels > 0.5)),
    "crnn": Task(CRNN, "logits", text_lines, _ctc_loss, "char acc",
                 lambda q, ref: character_accuracy(ctc_greedy(q), ctc_greedy(ref)),
                 lambda q, labels: character_accuracy(ctc_greedy(q), _label_strings(labels))),
}


def score(name: str, output: np.ndarray, float_output: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task measure (rule 5) of a model's output against the float model's and against the labels."""
    task = TASKS[name]
    return {"vs_float": task.compare_outputs(output, float_output), "vs_labels": task.compare_labels(output, labels)}


def train(name: str, size: Size) -> tuple[nn.Module, float]:
    """The net trained as rule 3 says, in eval mode, and the seconds its training took."""
    task = TASKS[name]
    rng = np.random.default_rng(FIT_SEED)
    with deterministic():
        module = task.build(size.width)
        optimizer = torch.optim.Adam(module.parameters(), lr=2e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=max(size.steps, 2))
        start = time.perf_counter()
        module.train()
        for _ in range(size.steps):
            inputs, labels = task.samples(size.batch, int(rng.integers(2**31)))
            loss = task.loss(module(torch.from_numpy(inputs)), torch.from_numpy(labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        seconds = time.perf_counter() - start
    return module.eval(), seconds


def case_tag(name: str, size: str) -> str:
    return f"conv-{name}-{size}"


def labels_path(case: Case) -> Path:
    """Where `prepare` keeps the labels of the case's evaluation samples."""
    return case.eval.with_name(case.eval.name.replace("eval-", "labels-"))


def prepare(name: str, folder: Path, calib: int, evaluate: int, size: str = "standard",
            log: Callable[[str], None] | None = None) -> Case:
    """The cached stand-in in `folder`/<tag> (rule 6), trained and exported only where the model is missing."""
    task = TASKS[name]
    home = folder / case_tag(name, size)
    home.mkdir(parents=True, exist_ok=True)
    case = Case(name, home / "model.onnx", home / f"calib-{calib}.npz", home / f"eval-{evaluate}.npz")
    if not case.model.exists():
        module, seconds = train(name, SIZES[size][name])
        if log:
            log(f"{name}: trained {SIZES[size][name].steps} steps in {seconds:.0f} s")
        with torch.no_grad():
            model = export(module, task.samples(1, EVAL_SEED)[0], task.output)
        _write_atomic(case.model, lambda p: onnx.save_model(model, p))
    if not case.calib.exists():
        _write_atomic(case.calib, lambda p: np.savez(p, x=task.samples(calib, CALIB_SEED)[0]))
    if not case.eval.exists() or not labels_path(case).exists():
        inputs, labels = task.samples(evaluate, EVAL_SEED)
        _write_atomic(labels_path(case), lambda p: np.savez(p, labels=labels))
        _write_atomic(case.eval, lambda p: np.savez(p, x=inputs))
    return case


def load_labels(case: Case) -> np.ndarray:
    with np.load(labels_path(case)) as data:
        return data["labels"]


def main(argv: list[str] | None = None) -> int:
    from qcompiler.ir.evaluate import open_session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--size", choices=SIZES, default="standard")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples")
    parser.add_argument("--eval-samples", type=int, default=200, help="evaluation samples, measured on")
    parser.add_argument("--work-dir", type=Path, help="cache of models and data (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            case = prepare(name, args.work_dir or Path(scratch), args.samples, args.eval_samples, args.size,
                           log=lambda message: print(message, file=sys.stderr, flush=True))
            with np.load(case.eval) as data:
                output = open_session(case.model).run(None, {"x": data["x"]})[0]
            figure = TASKS[name].compare_labels(output, load_labels(case))
            print(f"{name} ({args.size}, {case.model.stat().st_size / 2**20:.1f} MB): float {TASKS[name].measure} "
                  f"{100 * figure:.1f}% against the labels of {args.eval_samples} held-out samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
