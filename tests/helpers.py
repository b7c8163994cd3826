"""Shared test helpers: running models in ONNX Runtime, random feeds for their inputs."""

from __future__ import annotations

import numpy as np
import onnx
from make_golden import KERNEL_NOISE, within_kernel_noise

from qcompiler import ir, passes
from qcompiler.ir.evaluate import open_session

# An x86 CPU with VNNI, for tests whose expected codes must not follow the machine running them
# (fold-weights' and dynamic-quant's reduce_range follow the target's CPU flags).
VNNI_CPU = passes.Target.named("ort-cpu", flags=frozenset({"avx2", "avx512_vnni"}), machine="x86_64")


def run_onnx(model: onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run in ONNX Runtime on one thread (so repeated runs are bit-for-bit repeatable)."""
    return open_session(model, threads=1).run(None, feeds)


def random_feeds(model: onnx.ModelProto | str, seed: int = 0, symbolic: int = 2) -> dict[str, np.ndarray]:
    """Inputs for every graph input ORT asks for; symbolic dims get size `symbolic`."""
    session = open_session(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else symbolic for d in arg.shape]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(_ORT_TYPES[arg.type]))
        if dtype.kind == "f":
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[arg.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


_ORT_TYPES = {
    "tensor(float)": onnx.TensorProto.FLOAT,
    "tensor(double)": onnx.TensorProto.DOUBLE,
    "tensor(float16)": onnx.TensorProto.FLOAT16,
    "tensor(int64)": onnx.TensorProto.INT64,
    "tensor(int32)": onnx.TensorProto.INT32,
    "tensor(int8)": onnx.TensorProto.INT8,
    "tensor(uint8)": onnx.TensorProto.UINT8,
    "tensor(bool)": onnx.TensorProto.BOOL,
}


def through_text(model: ir.Model) -> tuple[str, ir.Model]:
    """Print with a weights dict and parse back: the path a user's edited dump takes."""
    weights: dict[str, np.ndarray] = {}
    text = ir.print_model(model, weights=weights)
    return text, ir.parse_model(text, weights=weights)


def assert_same_outputs(expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    """Bit-identical outputs (NaN equal to NaN)."""
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert want.dtype == got.dtype and want.shape == got.shape
        assert np.array_equal(want, got, equal_nan=want.dtype.kind == "f")


def assert_close_across_cpus(actual, expected, noise: float = KERNEL_NOISE) -> None:
    """Float results compared with data another machine made: within kernel noise relative to the
    array's magnitude (make_golden.KERNEL_NOISE says why), never bit for bit."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert within_kernel_noise(actual, expected, noise), (
        f"max abs difference {np.max(np.abs(actual.astype(np.float64) - expected)):.3g} "
        f"exceeds {noise:g} x max|expected| = {noise * np.max(np.abs(expected)):.3g}")


def npy_with_unsortable_header() -> bytes:
    """A .npy whose header dict mixes str and bytes keys, which numpy's reader fails to sort."""
    header = b"{'descr': '<f4', b'fortran_order': False, 'shape': (2,), }"
    header += b" " * (63 - 10 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(8)
