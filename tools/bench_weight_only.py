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
`--methods rtn,gptq,awq` prints instead how weight-only chooses its int4 codes, side by side:
per model, method and block size (32 and 128), the file size and the output SQNR against
the float model in ONNX Runtime (MatMulNBits at its default accuracy level 4, and at 0,
float compute, so the weight error alone shows), on data held out from calibration; with
the pass's own figure, the mean SQNR of each weight's output on the calibration rows, and
its time. Models: a stack of 4 MatMuls 512x512 whose inputs are correlated with outlier
channels (`correlated_inputs`; 2048 calibration rows, 512 held out: GPTQ needs rows well
beyond K, or X^T X is of low rank and it fits the calibration rows alone), the seeded
encoder of tests/encoder_model.py (64 calibration sentences of 32 tokens, 16 held out) and, with
`--standin`, the MiniLM-sized stand-in of tools/encoder_standins.py (64 and 32 sentences).

    python tools/bench_weight_only.py                    # 8 layers 1024x1024
    python tools/bench_weight_only.py --layers 4 --dim 512 --models matmul
    python tools/bench_weight_only.py --compare
    python tools/bench_weight_only.py --methods rtn,gptq,awq [--standin]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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


METHOD_BLOCKS = (32, 128)


def method_cases(scratch: Path, standin: bool) -> list[tuple[str, onnx.ModelProto, list[dict], list[dict]]]:
    """(name, float model, calibration feeds, held-out feeds) for --methods."""
    cases = [("correlated 4x512", build("matmul", 4, 512, batch="N"),
              [{"x": correlated_inputs(512, 512, seed)} for seed in range(4)],
              [{"x": correlated_inputs(128, 512, seed)} for seed in range(100, 104)])]
    found = encoder(scratch)
    if found is not None:
        from encoder_model import token_batches

        cases.append(("encoder 6x128", found[0], token_batches(64, 1), token_batches(16, 2)))
    if standin:
        import encoder_standins

        from qcompiler.data import input_specs, open_calibration_data

        case = encoder_standins.prepare("minilm", scratch, 64, 32)
        proto = onnx.load(case.model)
        specs = input_specs(ir.load_model(proto))
        cases.append(("minilm stand-in", proto, list(open_calibration_data(case.calib, specs)),
                      list(open_calibration_data(case.eval, specs))))
    return cases


def methods(names: list[str], scratch: Path, standin: bool) -> None:
    """The --methods table (module docstring)."""
    print(f"{'model':18} {'method':6} {'block':>5} {'size KB':>9} {'ratio':>6} {'SQNR dB':>8} {'acc0 dB':>8} "
          f"{'calib dB':>8} {'pass s':>7}")
    for name, proto, calib, held_out in method_cases(scratch, standin):
        float_path = scratch / "methods-float.onnx"
        onnx.save(proto, float_path)
        size = float_path.stat().st_size
        for block in METHOD_BLOCKS:
            for method in names:
                model, ctx = ir.load_model(proto), PassContext(calibration_data=calib)
                started = time.perf_counter()
                PassManager(f"canonicalize,fuse,weight-only{{block_size={block},method={method}}},cleanup").run(
                    model, ctx)
                seconds = time.perf_counter() - started
                path = scratch / f"methods-{method}.onnx"
                ir.save_model(model, path)
                sqnr = np.mean([m.sqnr_db for m in compare_models(float_path, path, held_out, threads=1)])
                float_compute = scratch / f"methods-{method}-acc0.onnx"
                for node in model.graph.nodes:  # MatMulNBits at float compute: x @ dequant(W), the weight error alone
                    if node.op_type == "MatMulNBits":
                        node.attributes.pop("accuracy_level", None)
                ir.save_model(model, float_compute)
                exact = np.mean([m.sqnr_db for m in compare_models(float_path, float_compute, held_out, threads=1)])
                calib_db = ctx.report["weight-only"].get("output_sqnr_db")
                print(f"{name:18} {method:6} {block:5} {path.stat().st_size / 1024:9.1f} "
                      f"{size / path.stat().st_size:6.2f} {sqnr:8.2f} {exact:8.2f} "
                      f"{'-' if calib_db is None else f'{calib_db:.2f}':>8} {seconds:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=32, help="random rows for the SQNR")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per variant")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--compare", action="store_true", help="uniform against k-means codes (cluster-weights)")
    parser.add_argument("--methods", help="comma-separated weight-only methods to compare (rtn,gptq,awq)")
    parser.add_argument("--standin", action="store_true", help="--methods also on the MiniLM-sized stand-in")
    args = parser.parse_args()
    if args.methods:
        print(f"int4 symmetric weight-only, output SQNR against float on held-out data, onnxruntime {ort.__version__}")
        with tempfile.TemporaryDirectory() as scratch:
            methods(args.methods.split(","), Path(scratch), args.standin)
        return
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
