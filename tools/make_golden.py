"""Generate the golden cases under golden/ from code, with fixed seeds.

Each case is a folder: model.onnx, inputs.npz (held-out inputs) and outputs.npz
(ONNX Runtime's float outputs on them). By default this only compares what it would
write with what is there and prints the differences; `--write` replaces the files.

    python tools/make_golden.py            # check: exit 1 when a case is stale
    python tools/make_golden.py --write    # regenerate
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def conv_relu() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
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
    return model, inputs


CASES: dict[str, Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]] = {"conv_relu": conv_relu}


def case_files(name: str) -> dict[str, bytes]:
    model, inputs = CASES[name]()
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip((o.name for o in session.get_outputs()), session.run(None, inputs)))
    return {"model.onnx": model.SerializeToString(), "inputs.npz": _npz(inputs), "outputs.npz": _npz(outputs)}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def stale_files(name: str, files: dict[str, bytes]) -> list[str]:
    """Files that differ from what is on disk (.npz by content: zip headers carry times)."""
    stale = []
    for filename, content in files.items():
        path = GOLDEN / name / filename
        if not path.exists():
            stale.append(f"{name}/{filename}: missing")
        elif filename.endswith(".npz"):
            tolerance = {"rtol": 1e-5, "atol": 1e-6} if filename == "outputs.npz" else {"rtol": 0, "atol": 0}
            stale.extend(f"{name}/{filename}: {d}" for d in _array_differences(path, content, **tolerance))
        elif path.read_bytes() != content:
            stale.append(f"{name}/{filename}: differs")
    return stale


def _array_differences(path: Path, content: bytes, rtol: float, atol: float) -> list[str]:
    with np.load(path) as old, np.load(io.BytesIO(content)) as new:
        if set(old.files) != set(new.files):
            return [f"arrays {sorted(old.files)} -> {sorted(new.files)}"]
        return [
            f"{key} max abs change {np.max(np.abs(old[key] - new[key])):.3g}"
            if old[key].shape == new[key].shape else f"{key} shape {old[key].shape} -> {new[key].shape}"
            for key in old.files
            if old[key].shape != new[key].shape or not np.allclose(old[key], new[key], rtol=rtol, atol=atol)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace stale golden files")
    parser.add_argument("cases", nargs="*", default=sorted(CASES), help="cases to check (default: all)")
    args = parser.parse_args(argv)
    stale_any = False
    for name in args.cases:
        files = case_files(name)
        stale = stale_files(name, files)
        for line in stale:
            print(line)
        if stale and args.write:
            (GOLDEN / name).mkdir(parents=True, exist_ok=True)
            for filename, content in files.items():
                (GOLDEN / name / filename).write_bytes(content)
            print(f"{name}: written")
        stale_any |= bool(stale) and not args.write
        if not stale:
            print(f"{name}: up to date")
    return 1 if stale_any else 0


if __name__ == "__main__":
    sys.exit(main())
