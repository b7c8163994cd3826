"""Generate the golden cases under golden/ from code, with fixed seeds.

Each case is a folder: model.onnx, inputs.npz (held-out inputs) and outputs.npz
(ONNX Runtime's float outputs on them). The cases built in golden_models.py add
calib.npz (calibration inputs, apart from the held-out ones) and expected.json (the
figures a compiled model must reach, golden_models.EXPECTED), a labelled case
labels.npz, and the two smallest compiled.qir: the IR `qc compile` makes of them. By
default this only compares what it would write with what is there and prints the
differences; `--write` replaces the files that differ.

A case is current when what is deterministic (inputs, labels, the graph, integer data)
matches exactly and what float kernels computed (outputs, fitted weights, calibrated
scales in a dump) matches within `KERNEL_NOISE`: the machines that regenerate a case
differ in CPU, and their kernels round differently in the last bits.

A trained case (digits_cnn, digits_mlp) is read back from its folder: its model and data
are the source of truth and only the derived files are regenerated, unless `--retrain`
trains it again (that needs scikit-learn; training runs float kernels, so weights
retrained on another CPU differ in the last bits).

    python tools/make_golden.py                                # check: exit 1 when a case is stale
    python tools/make_golden.py --write                        # regenerate
    python tools/make_golden.py --retrain digits_cnn --write   # train again, then regenerate
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from golden_models import EXPECTED, MEASURED_WITH, Case, mlp_case, mobilenet_like, outlier_convnet, resnet_like, \
    stored_digits, train_digits, train_digits_mlp, transformer_block, unet_like
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler import ir
from qcompiler.ir.evaluate import open_session

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def conv_relu() -> Case:
    """A small residual CNN classifier with a symbolic batch: Conv/Relu/MaxPool/Add/GAP/Gemm."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) or 1
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    initializers = [
        weight("conv1.weight", 8, 3, 3, 3), weight("conv1.bias", 8),
        weight("conv2.weight", 8, 8, 3, 3), weight("conv2.bias", 8),
        weight("fc.weight", 10, 8), weight("fc.bias", 10),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["p1", "r2"], ["res"], name="residual"),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qcompiler-golden")
    model.ir_version = 8
    inputs = {"x": np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)}
    return Case(model, inputs)


def digits_cnn() -> Case:
    return stored_digits(GOLDEN / "digits_cnn")


def digits_mlp() -> Case:
    return stored_digits(GOLDEN / "digits_mlp")


CASES: dict[str, Callable[[], Case]] = {
    "conv_relu": conv_relu,
    "resnet_like": resnet_like,
    "mobilenet_like": mobilenet_like,
    "mlp": mlp_case,
    "transformer_block": transformer_block,
    "unet_like": unet_like,
    "digits_cnn": digits_cnn,
    "digits_mlp": digits_mlp,
    "outlier_convnet": outlier_convnet,
}
TRAINED: dict[str, Callable[[], Case]] = {"digits_cnn": train_digits, "digits_mlp": train_digits_mlp}
COMPILED_DUMPS = ("mlp", "digits_cnn")  # the two smallest: their compiled IR is reviewed line by line
DUMP_RECIPE = {"passes": {"fold-weights": {"reduce_range": True}}}


def case_files(name: str, retrain: bool = False) -> dict[str, bytes]:
    case = (TRAINED[name] if retrain else CASES[name])()
    onnx.checker.check_model(case.model)
    session = open_session(case.model)
    outputs = dict(zip((o.name for o in session.get_outputs()), session.run(None, case.inputs)))
    files = {"model.onnx": case.model.SerializeToString(), "inputs.npz": _npz(case.inputs),
             "outputs.npz": _npz(outputs)}
    if case.calib is not None:
        files["calib.npz"] = _npz(case.calib)
    if case.labels is not None:
        files["labels.npz"] = _npz({"labels": case.labels})
    if name in EXPECTED:
        files["expected.json"] = _expected_json(name, outputs, case.labels)
    if name in COMPILED_DUMPS:
        files["compiled.qir"] = _compiled_dump(files["model.onnx"], files["calib.npz"])
    return files


def _compiled_dump(model: bytes, calib: bytes) -> bytes:
    """The IR `qc compile` makes of the case, large constants summarized. reduce_range is
    pinned so the dump does not depend on the CPU it was made on."""
    with tempfile.TemporaryDirectory() as scratch:
        calib_path = Path(scratch) / "calib.npz"
        calib_path.write_bytes(calib)
        result = qcompiler.compile(model, calib_path, recipe=DUMP_RECIPE)
    return ir.print_model(result.model).encode()


def _expected_json(name: str, outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> bytes:
    """The case's thresholds, plus the float model's top-1 accuracy where there are labels."""
    (logits,) = outputs.values()
    accuracy = None if labels is None else round(float(np.mean(logits.argmax(axis=1) == labels)), 4)
    expected = {**EXPECTED[name], "float_accuracy": accuracy, "measured_with": MEASURED_WITH}
    return (json.dumps(expected, indent=2, sort_keys=True) + "\n").encode()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def stale_files(name: str, files: dict[str, bytes]) -> list[str]:
    """Files that differ from what is on disk beyond what the CPU may change (see `within_kernel_noise`)."""
    return [f"{name}/{filename}: {d}" for filename, content in files.items()
            for d in _differences(GOLDEN / name / filename, content)]


# Float32 results of the same math on another CPU: ONNX Runtime and torch pick kernels by
# ISA (AVX2, AVX-512, VNNI), which sum dot products in other orders and fuse multiply-adds
# or not. Each reordered sum of K terms moves by a few ulps of the sum of |terms|, so the
# error is relative to the magnitude of the tensor, not of each element: an element that
# cancels to near 0 keeps the absolute error of its operands. 1e-5 of the largest |value|
# is ~80 float32 ulps at that scale: room for a chain of ~10 reordered layers. Measured
# between an AVX2 and an AVX-512 VNNI machine: at most 1.6e-6 on the golden outputs
# (unet_like), 1.6e-7 on weights fitted from BatchNorm statistics.
KERNEL_NOISE = 1e-5


def within_kernel_noise(actual: np.ndarray, expected: np.ndarray, noise: float = KERNEL_NOISE) -> bool:
    """Same shape, and every element within `noise` times the largest |expected|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return False
    if expected.size == 0 or expected.dtype.kind not in "fc":
        return bool(np.array_equal(actual, expected))
    scale = float(np.max(np.abs(expected)))
    return bool(np.all(np.abs(actual.astype(np.float64) - expected) <= noise * scale))


def _differences(path: Path, content: bytes) -> list[str]:
    """What is deterministic (inputs, labels, the graph) must match exactly; what a float
    kernel computed (outputs, fitted weights, calibrated scales) within kernel noise."""
    if not path.exists():
        return ["missing"]
    old = path.read_bytes()
    if old == content:
        return []
    if path.suffix == ".npz":
        return _array_differences(old, content, tolerant=path.name == "outputs.npz")
    if path.suffix == ".onnx":
        return _model_differences(old, content)
    if path.suffix == ".qir":
        return _dump_differences(old.decode(), content.decode())
    return ["differs"]


def _array_differences(old_bytes: bytes, new_bytes: bytes, tolerant: bool) -> list[str]:
    with np.load(io.BytesIO(old_bytes)) as old, np.load(io.BytesIO(new_bytes)) as new:
        if set(old.files) != set(new.files):
            return [f"arrays {sorted(old.files)} -> {sorted(new.files)}"]
        changes = []
        for key in old.files:
            before, after = old[key], new[key]
            if before.shape != after.shape:
                changes.append(f"{key} shape {before.shape} -> {after.shape}")
            elif not (within_kernel_noise(after, before) if tolerant else np.array_equal(after, before)):
                changes.append(f"{key} max abs change {np.max(np.abs(after.astype(np.float64) - before)):.3g}")
        return changes


def _model_differences(old_bytes: bytes, new_bytes: bytes) -> list[str]:
    """The graph, attributes and integer tensors exactly; float initializers within kernel noise."""
    try:
        old, new = onnx.load_from_string(old_bytes), onnx.load_from_string(new_bytes)
    except DecodeError:
        return ["differs"]
    old_floats, new_floats = _take_float_initializers(old), _take_float_initializers(new)
    if old.SerializeToString() != new.SerializeToString() or old_floats.keys() != new_floats.keys():
        return ["differs (graph or integer data)"]
    return [f"initializer {name!r} differs beyond kernel noise" for name, array in new_floats.items()
            if not within_kernel_noise(array, old_floats[name])]


def _take_float_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float initializers' arrays, by name, with their data cleared from `model`."""
    floats = {}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f":
            floats[tensor.name] = array
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
    return floats


_NUMBER = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _dump_differences(old: str, new: str) -> list[str]:
    """Line by line: the text between numbers exactly; numbers as `_numbers_agree` allows."""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    if len(old_lines) == len(new_lines) and all(
            _NUMBER.split(a) == _NUMBER.split(b) and _numbers_agree(_NUMBER.findall(a), _NUMBER.findall(b))
            for a, b in zip(old_lines, new_lines)):
        return []
    diff = difflib.unified_diff(old_lines, new_lines, lineterm="", n=0)
    return ["differs:\n" + "\n".join(list(diff)[2:22])]


def _numbers_agree(old: list[str], new: list[str]) -> bool:
    """Floats (scales, ranges) within a relative KERNEL_NOISE, since calibration ran float kernels;
    integers within 1, since a code rounded from such a float may cross a .5 boundary."""
    for a, b in zip(old, new):
        x, y = float(a), float(b)
        integer = _is_integer_token(a) and _is_integer_token(b)
        if abs(x - y) > (1 if integer else KERNEL_NOISE * max(abs(x), abs(y))):
            return False
    return len(old) == len(new)


def _is_integer_token(text: str) -> bool:
    return not any(c in text for c in ".eE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace stale golden files")
    parser.add_argument("--retrain", action="append", default=[], choices=sorted(TRAINED),
                        help="train this case again instead of reading its stored model and data")
    parser.add_argument("cases", nargs="*", default=sorted(CASES), help="cases to check (default: all)")
    args = parser.parse_args(argv)
    failed = False
    for name in args.cases:
        try:
            files = case_files(name, retrain=name in args.retrain)
        except FileNotFoundError as error:
            print(error)
            failed = True
            continue
        stale = stale_files(name, files)
        for line in stale:
            print(line)
        if stale and args.write:
            (GOLDEN / name).mkdir(parents=True, exist_ok=True)
            for filename, content in files.items():
                if _differences(GOLDEN / name / filename, content):
                    (GOLDEN / name / filename).write_bytes(content)
            print(f"{name}: written")
        failed |= bool(stale) and not args.write
        if not stale:
            print(f"{name}: up to date")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
