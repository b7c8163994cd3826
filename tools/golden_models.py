"""The torch models behind the golden cases, their inputs, and the figures a compiled model must reach.

1. Every model is built under `torch.manual_seed(MODEL_SEED)` on one thread with
   deterministic algorithms, and exported by the classic exporter (`dynamo=False`, opset
   17) in eval mode with input "x" and a dynamic "batch" axis on the input and the
   output, weights inline.
2. An untrained net is fitted to its data as training would leave it (`fit_statistics`,
   on a draw of its own): BatchNorm gets random scales and shifts and the running stats
   of that data, so activations keep their scale through depth, and a classifier's head
   reads standardized features, so its top-1 varies with the input. The exporter folds
   each Conv's BatchNorm into the Conv: the stats show up as uneven per-channel weights.
3. Inputs come from numpy generators with fixed seeds; calibration and evaluation inputs
   use different seeds, so a case never evaluates on what it calibrated with. Images are
   smooth patterns stored at 8-bit precision (as decoded pixels are), then normalized.
4. digits_cnn and digits_mlp are trained (`train_digits`, `train_digits_mlp`, only on
   request: they need scikit-learn) on the first 1197 images of scikit-learn's digits;
   their stored model, calibration images (train split), evaluation images and labels
   (the test split) are the source of truth from then on (`stored_digits`), so
   regenerating the other files needs neither. digits_cnn is small enough that int8 runs
   slower than float; digits_mlp's 1024x1024 Gemm is large enough that int8 pays.
5. EXPECTED holds, per case, the figures the compiled model must reach on the evaluation
   inputs against ONNX Runtime's float outputs: SQNR in dB, top-1 agreement (None for a
   non-classifier), accuracy drop on the labels (None without labels) and the share of
   Conv/MatMul/Gemm multiply-accumulates ONNX Runtime runs in integer kernels (None where
   not required). They were measured with MEASURED_WITH on this project's CPUs (AVX2, no VNNI,
   so weights in reduce range) and set a margin below: SQNR 3 dB, rounded down. A case
   compiled otherwise names its `recipe`; outlier_convnet also says how far plain int8
   must fall short (`max_int8_sqnr_db`) and which units assign-precision must promote.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from torch_models import EncoderBlock, randomize_batch_norm  # noqa: E402

from qcompiler.passes.infra.progress import silenced  # noqa: E402

OPSET = 17
MODEL_SEED = 0
CALIB_SEED = 100
EVAL_SEED = 200
FIT_SEED = 300
IMAGE_SHAPE = (3, 32, 32)
DIGITS_TRAIN = 1197
MEASURED_WITH = "qcompiler.compile defaults: the int8 pipeline for ort-cpu, 64 calibration samples"

EXPECTED: dict[str, dict[str, float | None]] = {
    "resnet_like": {"min_sqnr_db": 22.0, "min_top1_agreement": 0.75, "max_accuracy_drop": None,
                    "min_integer_flop_share": 0.95},
    "mobilenet_like": {"min_sqnr_db": 12.0, "min_top1_agreement": 0.75, "max_accuracy_drop": None,
                       "min_integer_flop_share": 0.95},
    "mlp": {"min_sqnr_db": 24.0, "min_top1_agreement": 0.9, "max_accuracy_drop": None,
            "min_integer_flop_share": 0.95},
    # per-tensor activations: the +-10 outlier channels squeeze the others into a few codes; static
    # int8 named, as a transformer's default is dynamic-smooth, whose run-time scales follow the batch
    "transformer_block": {"min_sqnr_db": 14.0, "min_top1_agreement": 0.85, "max_accuracy_drop": None,
                          "min_integer_flop_share": 0.95, "recipe": {"pipeline": "int8"}},
    "unet_like": {"min_sqnr_db": 17.0, "min_top1_agreement": None, "max_accuracy_drop": None,
                  "min_integer_flop_share": 0.95},
    "digits_cnn": {"min_sqnr_db": 30.0, "min_top1_agreement": 0.98, "max_accuracy_drop": 0.01,
                   "min_integer_flop_share": 0.95},
    # measured 41.5 dB (40.9 dB in reduce range), top-1 agreement 100%, no accuracy lost
    "digits_mlp": {"min_sqnr_db": 37.0, "min_top1_agreement": 0.99, "max_accuracy_drop": 0.01,
                   "min_integer_flop_share": 0.95},
    # compiled with OUTLIER_RECIPE: all-int8 misses the budget, assign-precision promotes
    # exactly the Conv reading the outlier channels (plain int8 measured -3.0 dB, mixed 29.9 dB)
    "outlier_convnet": {"min_sqnr_db": 25.0, "min_top1_agreement": 0.9, "max_accuracy_drop": None,
                        "min_integer_flop_share": None, "recipe": {"pipeline": "mixed",
                        "passes": {"assign-precision": {"min_sqnr_db": 25.0}}},
                        "max_int8_sqnr_db": 10.0, "promoted": ["/features/mix/mix.0/Conv"]},
}


@dataclass(frozen=True)
class Case:
    """What a golden folder is made from; calibration inputs and labels only where the case has them."""

    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    calib: dict[str, np.ndarray] | None = None
    labels: np.ndarray | None = None


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Seeded, single-threaded, deterministic kernels; the caller's settings come back after."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(MODEL_SEED)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def export(module: nn.Module, sample: np.ndarray, output: str) -> onnx.ModelProto:
    """Classic export with input "x" and a dynamic "batch" axis on the input and the output."""
    buffer = io.BytesIO()
    with silenced():
        torch.onnx.export(
            module.eval(), (torch.from_numpy(sample[:1]),), buffer, dynamo=False, opset_version=OPSET,
            input_names=["x"], output_names=[output], dynamic_axes={"x": {0: "batch"}, output: {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free Conv and a BatchNorm with a random scale and shift (exported folded into the Conv)."""
    bn = nn.BatchNorm2d(cout)
    randomize_batch_norm(bn)
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), bn]


class BasicBlock(nn.Module):
    """ResNet basic block; a strided one projects its shortcut with a 1x1 Conv+BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, stride=stride), nn.ReLU(), *conv_bn(cout, cout))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Classifier(nn.Module):
    """A feature extractor and a Linear head.

    Random features share a large common component (post-ReLU averages are positive), so
    a random head gives nearly every input the same class and top-1 agreement would be
    trivial; `standardize_head` spreads the classes over the inputs.
    """

    features: nn.Module
    head: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def standardize_head(self, sample: np.ndarray) -> None:
        """Fold centering on the features' mean over `sample` and one unit-spread scale into the head.

        One scale for all features: dividing each by its own std would blow up near-dead
        ones, whose tiny variation is mostly quantization noise.
        """
        seen = self.features(torch.from_numpy(sample))
        mean = seen.mean(dim=0)
        self.head.weight /= (seen - mean).std()
        self.head.bias.copy_(-self.head.weight @ mean)


class ResNetLike(Classifier):
    """Stem Conv+BN+ReLU, MaxPool, two basic blocks, a strided projecting one, GAP, Linear."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(3, width), nn.ReLU(), nn.MaxPool2d(2),
            BasicBlock(width, width), BasicBlock(width, width), BasicBlock(width, 2 * width, stride=2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, classes)


class OutlierConvNet(Classifier):
    """Stem, a Conv+BN+ReLU whose OUTLIER_CHANNELS carry 100x larger values, the Conv `mix`
    reading them, GAP, Linear.

    `make_outliers` scales those channels up in `outliers` and the matching input channels
    of `mix` down, so the function stays that of the fitted net while `mix`'s input holds
    a few channels far above the rest, as in real nets with outlier features: one
    per-tensor int8 scale squeezes the other channels into a handful of codes.
    """

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, width), nn.ReLU(), nn.MaxPool2d(2))
        self.outliers = nn.Sequential(*conv_bn(width, width), nn.ReLU())
        self.mix = nn.Sequential(*conv_bn(width, 2 * width), nn.ReLU())
        self.features = nn.Sequential(self.stem, self.outliers, self.mix, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, classes)

    @torch.no_grad()
    def make_outliers(self, factor: float = 100.0) -> None:
        bn, mix = self.outliers[1], self.mix[0]
        channels = list(OUTLIER_CHANNELS)
        bn.weight[channels] *= factor
        bn.bias[channels] *= factor
        mix.weight[:, channels] /= factor


OUTLIER_CHANNELS = (2, 9, 13)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, 1x1 project; Add when the shape allows."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            *conv_bn(cin, hidden, 1), act(),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden), act(),
            *conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetLike(Classifier):
    """Strided stem, a depthwise-separable block, inverted residuals (ReLU6, Hardswish), GAP, Linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(3, 16, stride=2), nn.ReLU6(),
            *conv_bn(16, 16, groups=16), nn.ReLU6(), *conv_bn(16, 24, 1), nn.ReLU6(),
            InvertedResidual(24, 24, 3, 1, nn.ReLU6),
            InvertedResidual(24, 32, 3, 2, nn.Hardswish),
            InvertedResidual(32, 32, 3, 1, nn.Hardswish),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, classes)


class Mlp(Classifier):
    """Four Linear layers with ReLU between, 64 features to 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                      nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)


class TokenMean(nn.Module):
    """Mean over the token axis (exports as ReduceMean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class TransformerLike(Classifier):
    """Two pre-norm encoder blocks over 16 tokens of 64 dims, mean-pooled into a 10-class head.

    A few residual channels run 10x larger than the rest, as in trained transformers: the
    inputs carry them with a fixed sign on every token (`tokens`), and the FFN output
    writes them scaled by 10 in every block.
    """

    OUTLIERS = (3, 17, 42)
    OUTLIER_SIGNS = (1.0, -1.0, 1.0)

    def __init__(self, dims: int = 64, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        blocks = [EncoderBlock(dims, heads, pre_norm=True) for _ in range(2)]
        self.features = nn.Sequential(*blocks, nn.LayerNorm(dims), TokenMean())
        self.head = nn.Linear(dims, classes)
        with torch.no_grad():
            for block in blocks:
                block.ffn[-1].weight[list(self.OUTLIERS)] *= 10
                block.ffn[-1].bias[list(self.OUTLIERS)] *= 10


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cin, cout), nn.ReLU(), *conv_bn(cout, cout), nn.ReLU())


class UNetLike(nn.Module):
    """Two encoder levels (MaxPool down), a bottleneck, nearest Resize up + Concat skips, a 4-channel map."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.enc1, self.enc2 = conv_block(3, width), conv_block(width, 2 * width)
        self.bottleneck = conv_block(2 * width, 4 * width)
        self.dec2, self.dec1 = conv_block(6 * width, 2 * width), conv_block(3 * width, width)
        self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(b), e2], dim=1))
        return self.out(self.dec1(torch.cat([self.up(d2), e1], dim=1)))


class DigitsMlp(nn.Module):
    """Flatten, Linear 64->1024, ReLU, Linear 1024->1024, ReLU, Linear 1024->10 over 8x8 grayscale digits
    (Dropout trains only).

    Nearly all its MACs sit in the 1024x1024 Gemm: 4 MB of float weights that a batch-1
    run streams whole, 1 MB in int8, so int8 pays even on CPUs without VNNI.
    """

    def __init__(self, width: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.1), nn.Linear(64, width), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(width, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def fold_normalization(self, mean: torch.Tensor, std: float) -> None:
        """Make the first Linear read raw pixels where it was trained on (pixels - mean) / std."""
        first = self.net[2]
        first.bias -= first.weight @ mean.flatten() / std
        first.weight /= std


class DigitsCnn(nn.Module):
    """Conv 8, Conv 16, MaxPool, Linear over 8x8 grayscale digits (Dropout trains only)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(16 * 4 * 4, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fit_statistics(module: nn.Module, sample: np.ndarray) -> None:
    """BatchNorm running stats from one pass over `sample` in train mode, then the head of a classifier."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: one batch gives its exact mean and variance
    with torch.no_grad():
        module.train()(torch.from_numpy(sample))
    module.eval()
    if isinstance(module, Classifier):
        module.standardize_head(sample)


def images(count: int, seed: int) -> np.ndarray:
    """Smooth color images rounded to 8 bits, then normalized.

    Each image has its own pattern scale (cells of 2-16 pixels, upsampled and blurred),
    contrast, color cast and grain, so pooled features differ between images.
    """
    rng = np.random.default_rng(seed)
    channels, height, width = IMAGE_SHAPE
    batch = np.empty((count, *IMAGE_SHAPE))
    for image in batch:
        cell = rng.choice([2, 4, 8, 16])
        coarse = rng.standard_normal((channels, height // cell, width // cell))
        image[:] = _blur(np.kron(coarse, np.ones((cell, cell)))) * rng.uniform(0.3, 1.5)
        image += rng.normal(0, 0.6, (channels, 1, 1)) + rng.uniform(0.02, 0.2) * rng.standard_normal(IMAGE_SHAPE)
    pixels = np.round(np.clip(0.5 + 0.25 * batch, 0, 1) * 255) / 255
    return ((pixels - 0.5) / 0.25).astype(np.float32)


def _blur(x: np.ndarray, passes: int = 2) -> np.ndarray:
    """Repeated [1, 2, 1] / 4 over both spatial axes (edges clamped)."""
    for _ in range(passes):
        for axis in (-2, -1):
            padded = np.concatenate([np.take(x, [0], axis), x, np.take(x, [-1], axis)], axis)
            n = x.shape[axis]
            x = (np.take(padded, range(n), axis) + 2 * x + np.take(padded, range(2, n + 2), axis)) / 4
    return x


def tokens(count: int, seed: int) -> np.ndarray:
    """[count, 16, 64] unit activations; the model's outlier channels sit at +-10 on every token."""
    x = np.random.default_rng(seed).standard_normal((count, 16, 64))
    x[..., list(TransformerLike.OUTLIERS)] += 10 * np.array(TransformerLike.OUTLIER_SIGNS)
    return x.astype(np.float32)


def vectors(count: int, seed: int) -> np.ndarray:
    """[count, 64] standard normal feature vectors."""
    return np.random.default_rng(seed).standard_normal((count, 64)).astype(np.float32)


def seeded_case(build: Callable[[], nn.Module], make_inputs: Callable[[int, int], np.ndarray], calib: int,
                evaluate: int, output: str, adjust: Callable[[nn.Module], None] | None = None) -> Case:
    """Build the module under the fixed seed, fit it (then `adjust` it) and export it; each use of
    inputs draws its own seed."""
    with deterministic():
        module = build()
        fit_statistics(module, make_inputs(64, FIT_SEED))
        if adjust is not None:
            adjust(module)
        model = export(module, make_inputs(1, EVAL_SEED), output)
    return Case(model, {"x": make_inputs(evaluate, EVAL_SEED)}, {"x": make_inputs(calib, CALIB_SEED)})


def resnet_like() -> Case:
    return seeded_case(ResNetLike, images, 64, 32, "logits")


def outlier_convnet() -> Case:
    return seeded_case(OutlierConvNet, images, 64, 32, "logits", adjust=OutlierConvNet.make_outliers)


def mobilenet_like() -> Case:
    return seeded_case(MobileNetLike, images, 64, 32, "logits")


def mlp_case() -> Case:
    return seeded_case(Mlp, vectors, 64, 32, "logits")


def transformer_block() -> Case:
    return seeded_case(TransformerLike, tokens, 64, 32, "logits")


def unet_like() -> Case:
    return seeded_case(UNetLike, images, 64, 16, "y")


def stored_digits(folder: Path) -> Case:
    """A trained digits case as stored: the model, its calibration images, the test split and labels."""
    missing = [f for f in ("model.onnx", "calib.npz", "inputs.npz", "labels.npz") if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{folder.name}: {', '.join(missing)} missing; train it with --retrain {folder.name}")
    with np.load(folder / "inputs.npz") as inputs, np.load(folder / "calib.npz") as calib, \
            np.load(folder / "labels.npz") as labels:
        return Case(onnx.load(folder / "model.onnx"), dict(inputs), dict(calib), labels["labels"])


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as [N, 1, 8, 8] float32 in [0, 1] and their int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[:, None], digits.target.astype(np.int64)


def digits_case(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, calib: int) -> Case:
    """The test split (all after DIGITS_TRAIN) with labels, and `calib` training images drawn with CALIB_SEED."""
    picks = np.random.default_rng(CALIB_SEED).choice(DIGITS_TRAIN, calib, replace=False)
    return Case(model, {"x": x[DIGITS_TRAIN:]}, {"x": x[np.sort(picks)]}, y[DIGITS_TRAIN:])


def train_digits(epochs: int = 40, calib: int = 64) -> Case:
    """Train DigitsCnn on the first DIGITS_TRAIN digits, test on the rest.

    Adam on batches of 64, each batch rolled by up to a pixel each way: without the shifts
    and the Dropout the net overfits the 1197 images and stays under 95% on the test split.
    """
    x, y = digit_images()
    train_x, train_y = torch.from_numpy(x[:DIGITS_TRAIN]), torch.from_numpy(y[:DIGITS_TRAIN])
    with deterministic():
        module = DigitsCnn()
        optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
        order = torch.Generator().manual_seed(MODEL_SEED)
        for _ in range(epochs):
            for batch in torch.randperm(DIGITS_TRAIN, generator=order).split(64):
                shift = torch.randint(-1, 2, (2,), generator=order).tolist()
                optimizer.zero_grad()
                F.cross_entropy(module(train_x[batch].roll(shift, (2, 3))), train_y[batch]).backward()
                optimizer.step()
        model = export(module, x, "logits")
    return digits_case(model, x, y, calib)


def jitter(images: torch.Tensor, generator: torch.Generator, turn: float = 0.15, zoom: float = 0.1,
           shift: float = 1.0) -> torch.Tensor:
    """Each [N, 1, H, W] image turned by up to `turn` radians, zoomed by up to `zoom` and moved by up
    to `shift` pixels each way, bilinearly resampled (blank outside)."""
    count, (height, width) = len(images), images.shape[-2:]
    angle = (2 * torch.rand(count, generator=generator) - 1) * turn
    scale = 1 + (2 * torch.rand(count, generator=generator) - 1) * zoom
    move = (2 * torch.rand(count, 2, generator=generator) - 1) * shift * 2 / torch.tensor([width, height])
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def train_digits_mlp(epochs: int = 40, calib: int = 64) -> Case:
    """Train DigitsMlp on the first DIGITS_TRAIN digits, test on the rest (the split of train_digits).

    Adam with a one-cycle schedule on batches of 64, each image jittered on its own
    (`jitter`), on pixels centered by their training mean and scaled by one spread, folded
    into the first Gemm for export: without the jitter (or with train_digits' one roll per
    batch) the MLP stays at 92-94% on the test split.
    """
    x, y = digit_images()
    train_x, train_y = torch.from_numpy(x[:DIGITS_TRAIN]), torch.from_numpy(y[:DIGITS_TRAIN])
    mean, std = train_x.mean(dim=0), float(train_x.std())
    with deterministic():
        module = DigitsMlp()
        optimizer = torch.optim.Adam(module.parameters(), lr=2e-3)
        steps = epochs * -(-DIGITS_TRAIN // 64)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
        order = torch.Generator().manual_seed(MODEL_SEED)
        for _ in range(epochs):
            module.train()
            for batch in torch.randperm(DIGITS_TRAIN, generator=order).split(64):
                optimizer.zero_grad()
                pixels = (jitter(train_x[batch], order) - mean) / std
                F.cross_entropy(module(pixels), train_y[batch]).backward()
                optimizer.step()
                schedule.step()
        module.fold_normalization(mean, std)
        model = export(module, x, "logits")
    return digits_case(model, x, y, calib)
