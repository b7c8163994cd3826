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

`--compare` prints instead uniform against non-uniform codes (cluster-weights) side by
side: file size and output SQNR of weight-only{bits=8}, weight-only{bits=4} and
cluster-weights at 16 and 256 levels on a 1024x1024 Laplace-distributed MatMul, the
trained digits CNN of golden/digits_cnn (every weight is under 4096 elements, so each
variant runs with min_size=0; weight-only leaves its Convs float) and the seeded encoder
of tests/encoder_model.py (6 layers, hidden 128; needs torch). Then what the run-time
rebuild of a clustered 1024x1024 MatMul costs at batch 1 on one thread, as ONNX
Runtime runs it by default (it constant-folds Cast + GatherElements at session creation)
and with constant folding disabled (the rebuild on every run).

    python tools/bench_weight_only.py                    # 8 layers 1024x1024
    python tools/bench_weight_only.py --layers 4 --dim 512 --models matmul
    python tools/bench_weight_only.py --compare
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir
from qcompiler.ir.evaluate import open_session
from qcompiler.passes import PassContext, PassManager
from qcompiler.validate import compare_models, measure_latency, time_sessions

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {  # matmulnbits runs at accuracy_level=4 unless the label says acc0
    "int8 qdq": "bits=8,format=qdq",
    "int8 matmulnbits": "bits=8,format=matmulnbits",
    "int8 matmulnbits acc0": "bits=8,format=matmulnbits,accuracy_level=0",
    "int4 qdq": "bits=4,format=qdq",
    "int4 matmulnbits": "bits=4,format=matmulnbits",
    "int4 matmulnbits acc0": "bits=4,format=matmulnbits,accuracy_level=0",
}
MODELS = ("matmul", "gemm", "gemm-t")


def build(kind: str, layers: int, dim: int, seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """`layers` of x @ W + b -> Relu (no Relu after the last), opset 21; `batch` rows per feed."""
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
    shape = [batch, 1, dim] if kind == "matmul" else [batch, dim]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def correlated_inputs(rows: int, dim: int, seed: int) -> np.ndarray:
    """Rows [rows, 1, dim] whose channels move together, as a transformer's hidden states do:
    z @ (0.3 I + G / sqrt(dim)) for gaussian z and one fixed gaussian G, with three outlier
    channels 20x larger than the rest. Inputs like these are where GPTQ and AWQ beat round to nearest."""
    mixing = 0.3 * np.eye(dim) + np.random.default_rng(1234).standard_normal((dim, dim)) / np.sqrt(dim)
    x = np.random.default_rng(seed).standard_normal((rows, dim)) @ mixing
    x[:, [3, dim // 3, 2 * dim // 3]] *= 20.0
    return x.astype(np.float32)[:, None, :]


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


COMPARED = {  # label: the pass that stores the weights
    "uniform int8": "weight-only{bits=8}",
    "uniform int4": "weight-only{bits=4}",
    "k-means 16": "cluster-weights{levels=16}",
    "k-means 256": "cluster-weights{levels=256}",
}


def laplace_matmul(dim: int = 1024, seed: int = 0) -> onnx.ModelProto:
    """x [1, dim] @ W [dim, dim], W Laplace-distributed (scale 1 / sqrt(2 dim): unit output variance)."""
    w = np.random.default_rng(seed).laplace(scale=1 / np.sqrt(2 * dim), size=(dim, dim)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "laplace",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def encoder(scratch: Path) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]] | None:
    """tests/encoder_model.py's seeded encoder exported by torch.onnx (classic), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, str(ROOT / "tests"))
    from encoder_model import build_encoder, token_batches

    feeds = token_batches(8, 1)
    path = scratch / "encoder.onnx"
    with warnings.catch_warnings():  # the tracer's notes on Python scalars
        warnings.simplefilter("ignore")
        torch.onnx.export(build_encoder(), (torch.from_numpy(feeds[0]["input_ids"]),), str(path),
                          input_names=["input_ids"], output_names=["hidden"], opset_version=17, dynamo=False)
    return onnx.load(path), feeds


def compare_cases(scratch: Path, rows: int) -> list[tuple[str, onnx.ModelProto, list[dict], str]]:
    """(name, float model, feeds, extra options for every variant)."""
    rng = np.random.default_rng(1)
    cases = [("laplace 1024x1024", laplace_matmul(),
              [{"x": rng.standard_normal((1, 1024)).astype(np.float32)} for _ in range(rows)], "")]
    with np.load(ROOT / "golden/digits_cnn/inputs.npz") as inputs:
        feeds = [{name: inputs[name][i:i + 1] for name in inputs.files} for i in range(len(inputs[inputs.files[0]]))]
    cases.append(("digits_cnn", onnx.load(ROOT / "golden/digits_cnn/model.onnx"), feeds, "min_size=0"))
    found = encoder(scratch)
    if found is not None:
        cases.append(("encoder 6x128", *found, ""))
    return cases


def compare(rows: int, budget_s: float, scratch: Path) -> None:
    """The --compare table, then the rebuild's latency (module docstring)."""
    print(f"{'model':18} {'variant':13} {'size KB':>9} {'ratio':>6} {'SQNR dB':>8}  stored as")
    for name, proto, feeds, extra in compare_cases(scratch, rows):
        float_path = scratch / "compare-float.onnx"
        onnx.save(proto, float_path)
        size = float_path.stat().st_size
        print(f"{name:18} {'float':13} {size / 1024:9.1f} {1.0:6.2f} {'inf':>8}")
        for label, step in COMPARED.items():
            options = ",".join(o for o in (step[step.index("{") + 1:-1], extra) if o)
            step = f"{step[:step.index('{')]}{{{options}}}"
            model, ctx = ir.load_model(proto), PassContext()
            PassManager(f"canonicalize,fuse,{step},cleanup").run(model, ctx)
            path = scratch / f"compare-{label.replace(' ', '-')}.onnx"
            ir.save_model(model, path)
            metrics = compare_models(float_path, path, feeds, threads=1)
            report = ctx.report.get(step[:step.index("{")], {})
            stored = f"{report.get('weights', 0)} weights" + (f", {report['index_type']} indices" if "index_type" in
                                                               report else "")
            print(f"{name:18} {label:13} {path.stat().st_size / 1024:9.1f} {size / path.stat().st_size:6.2f} "
                  f"{metrics[0].sqnr_db:8.1f}  {stored}")
    import onnxruntime as ort

    proto = laplace_matmul()
    float_path, path = scratch / "rebuild-float.onnx", scratch / "rebuild-k16.onnx"
    onnx.save(proto, float_path)
    model = ir.load_model(proto)
    PassManager("cluster-weights").run(model, PassContext())
    ir.save_model(model, path)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 1024)).astype(np.float32)}

    def session(source: Path, disabled: list[str]) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        return ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=disabled)

    print("\nrun-time rebuild, 1024x1024 MatMul, k-means 16 levels (uint4 indices), batch 1, 1 thread:")
    for label, disabled in (("ORT default (folds the rebuild)", []), ("constant folding disabled", ["ConstantFolding"])):
        pair = time_sessions((session(float_path, disabled), session(path, disabled)), feeds, threads=1,
                             repeat=400, budget_s=budget_s)
        print(f"  {label:32} float {pair.float_model.median_ms:.3f} ms, clustered {pair.quant_model.median_ms:.3f} ms "
              f"({pair.ratio:.2f}x, +{pair.quant_model.median_ms - pair.float_model.median_ms:.3f} ms per run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=32, help="random rows for the SQNR")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per variant")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--compare", action="store_true", help="uniform against k-means codes (cluster-weights)")
    args = parser.parse_args()
    if args.compare:
        print(f"output SQNR over {args.rows} rows against float, onnxruntime {ort.__version__}")
        with tempfile.TemporaryDirectory() as scratch:
            compare(args.rows, args.budget, Path(scratch))
        return
    print(f"{args.layers} layers {args.dim}x{args.dim}, batch 1, 1 thread, onnxruntime {ort.__version__}")
    print(f"{'model':7} {'variant':22} {'size MB':>8} {'ratio':>6} {'SQNR dB':>8} {'latency':>8}  ORT runs")
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.models:
            for model, label, size, ratio, sqnr, latency, ops in bench(kind, args.layers, args.dim, args.rows,
                                                                       args.budget, Path(scratch)):
                print(f"{model:7} {label:22} {size / 2**20:8.2f} {ratio:6.2f} {sqnr:8.1f} {latency:7.2f}x  {ops}")


if __name__ == "__main__":
    main()
