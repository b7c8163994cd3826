"""Weight-only int8/int4, measured: file size, output SQNR and latency against float, per format.

For people, not CI. Builds MatMul-heavy models in numpy (gaussian weights / sqrt(K),
random biases, Relu between layers), runs `canonicalize,fuse,weight-only{...},cleanup`
for each variant, and prints per variant:

1. size: the saved .onnx file, and float size / that size;
2. SQNR: output SQNR against the float model in ONNX Runtime (validate.compare_models)
   on `--rows` random rows;
3. latency: quantized median / float median at batch 1 on one thread, the two models
   run interleaved (validate.measure_latency), so both see the same machine noise;
4. ops: what ONNX Runtime runs after its own graph optimizations (optimized model
   written by the session), e.g. whether DequantizeLinear + MatMul became MatMulNBits.

Models: `matmul` takes x [1, 1, D] (3-D, so MatMul + Add stay MatMul, as in a
transformer); `gemm` takes x [1, D] (fuse makes Gemm of MatMul + Add); `gemm-t` is the
same with the weights stored transposed, Gemm {transB=1} (a torch Linear export).

    python tools/bench_weight_only.py                    # 8 layers 1024x1024
    python tools/bench_weight_only.py --layers 4 --dim 512 --models matmul
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir
from qcompiler.ir.evaluate import open_session
from qcompiler.passes import PassContext, PassManager
from qcompiler.validate import compare_models, measure_latency

VARIANTS = {  # matmulnbits runs at accuracy_level=4 unless the label says acc0
    "int8 qdq": "bits=8,format=qdq",
    "int8 matmulnbits": "bits=8,format=matmulnbits",
    "int8 matmulnbits acc0": "bits=8,format=matmulnbits,accuracy_level=0",
    "int4 qdq": "bits=4,format=qdq",
    "int4 matmulnbits": "bits=4,format=matmulnbits",
    "int4 matmulnbits acc0": "bits=4,format=matmulnbits,accuracy_level=0",
}
MODELS = ("matmul", "gemm", "gemm-t")


def build(kind: str, layers: int, dim: int, seed: int = 0) -> onnx.ModelProto:
    """`layers` of x @ W + b -> Relu (no Relu after the last), opset 21."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
        inits += [numpy_helper.from_array(w.T.copy() if kind == "gemm-t" else w, f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(dim) * 0.1).astype(np.float32), f"b{i}")]
        y = "y" if i == layers - 1 else f"h{i}"
        if kind == "gemm-t":
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"a{i}"], transB=1))
        else:
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        nodes.append(helper.make_node("Relu" if i < layers - 1 else "Identity", [f"a{i}"], [y]))
        x = y
    shape = [1, 1, dim] if kind == "matmul" else [1, dim]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def compile_variant(proto: onnx.ModelProto, options: str) -> ir.Model:
    model = ir.load_model(proto)
    PassManager(f"canonicalize,fuse,weight-only{{{options}}},cleanup").run(model, PassContext())
    return model


def ort_ops(path: Path, scratch: Path) -> str:
    """The ops ONNX Runtime runs once its optimizations are done, counted."""
    optimized = scratch / f"{path.stem}.opt.onnx"
    open_session(path, threads=1, save_optimized=optimized)
    graph = onnx.load(optimized, load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node)
    return " ".join(f"{op}x{n}" for op, n in sorted(counts.items()))


def bench(kind: str, layers: int, dim: int, rows: int, budget_s: float, scratch: Path) -> list[tuple]:
    proto = build(kind, layers, dim)
    float_path = scratch / f"{kind}.onnx"
    onnx.save(proto, float_path)
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(rows)]
    table = [(kind, "float", float_path.stat().st_size, 1.0, float("inf"), 1.0, ort_ops(float_path, scratch))]
    for label, options in VARIANTS.items():
        path = scratch / f"{kind}-{label.replace(' ', '-')}.onnx"
        ir.save_model(compile_variant(proto, options), path)
        (metrics,) = compare_models(float_path, path, data, threads=1)
        latency = measure_latency(float_path, path, data[0], threads=1, repeat=400, budget_s=budget_s)
        size = path.stat().st_size
        table.append((kind, label, size, table[0][2] / size, metrics.sqnr_db, latency.ratio, ort_ops(path, scratch)))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=32, help="random rows for the SQNR")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per variant")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args()
    print(f"{args.layers} layers {args.dim}x{args.dim}, batch 1, 1 thread, onnxruntime {ort.__version__}")
    print(f"{'model':7} {'variant':22} {'size MB':>8} {'ratio':>6} {'SQNR dB':>8} {'latency':>8}  ORT runs")
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.models:
            for model, label, size, ratio, sqnr, latency, ops in bench(kind, args.layers, args.dim, args.rows,
                                                                       args.budget, Path(scratch)):
                print(f"{model:7} {label:22} {size / 2**20:8.2f} {ratio:6.2f} {sqnr:8.1f} {latency:7.2f}x  {ops}")


if __name__ == "__main__":
    main()
