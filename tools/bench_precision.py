"""Mixed precision, measured: all-int8 against assign-precision at two budgets, and what sensitivity costs.

For people, not CI. For each model (golden cases, and the tools/bench.py models with
--models), compiled by qcompiler.compile with its defaults on this CPU:

1. `int8`: the int8 pipeline. `+3 dB`, `+6 dB`: the mixed pipeline with
   assign-precision{min_sqnr_db=S} where S is the int8 model's worst output SQNR plus 3
   or 6 dB (capped at 45 dB), a budget all-int8 misses by construction. outlier_convnet
   uses its golden budget (25 dB) as the second one instead.
2. Columns: the worst output SQNR and top-1 agreement on the evaluation data (the
   compile report's, from ONNX Runtime runs), accuracy on labels where the case has
   them, units promoted, the share of Conv/MatMul/Gemm work the assignment leaves int8
   (`int8 work`), the share ONNX Runtime runs in integer kernels (`int kernels`), the
   quantized/float latency at batch 1 on 1 thread (the report's interleaved
   measurement) and the compile time.
3. `sensitivity`: qcompiler.analyze.sensitivity on the same data, its wall time as a
   multiple of one float inference pass over the same feeds in ONNX Runtime (timed in
   this process, session already open), and the number of variants it ran.

    python tools/bench_precision.py                          # golden cases
    python tools/bench_precision.py --models resnet50 --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompiler  # noqa: E402
from qcompiler.analyze import sensitivity  # noqa: E402
from qcompiler.ir.evaluate import open_session  # noqa: E402

GOLDEN_CASES = ("resnet_like", "mobilenet_like", "mlp", "transformer_block", "unet_like", "digits_cnn",
                "outlier_convnet")
BENCH_MODELS = ("resnet50", "mobilenetv2", "bert")
CAP_DB = 45.0


def golden_files(name: str) -> tuple[Path, Path, Path, Path | None]:
    folder = GOLDEN / name
    labels = folder / "labels.npz"
    return folder / "model.onnx", folder / "calib.npz", folder / "inputs.npz", labels if labels.exists() else None


def accuracy(result: qcompiler.CompileResult, inputs: Path, labels: Path | None) -> float | None:
    if labels is None:
        return None
    session = open_session(result.model)
    with np.load(inputs) as feeds, np.load(labels) as truth:
        logits = session.run(None, dict(feeds))[0]
        return float(np.mean(logits.argmax(-1) == truth["labels"]))


def row(label: str, result: qcompiler.CompileResult, inputs: Path, labels: Path | None) -> dict:
    report = result.report
    precision = report.precision or {"promoted": [], "int8_work_share": 1.0}
    top1 = [o.top1_agreement for o in report.outputs if o.top1_agreement is not None]
    return {"setting": label, "sqnr_db": min(o.sqnr_db for o in report.outputs),
            "top1": min(top1) if top1 else None, "accuracy": accuracy(result, inputs, labels),
            "promoted": len(precision["promoted"]), "int8_work": precision["int8_work_share"],
            "int_kernels": report.kernels.integer_share, "latency": report.latency.ratio,
            "compile_s": report.compile_seconds}


def float_pass_seconds(model: Path, inputs: Path) -> float:
    """One float inference pass over the evaluation rows, one row per run as sensitivity feeds them."""
    session = open_session(model)
    with np.load(inputs) as arrays:
        feeds = [{k: arrays[k][i:i + 1] for k in arrays.files} for i in range(len(arrays[arrays.files[0]]))]
    session.run(None, feeds[0])
    start = time.perf_counter()
    for feed in feeds:
        session.run(None, feed)
    return time.perf_counter() - start


def bench(name: str, model: Path, calib: Path, inputs: Path, labels: Path | None) -> dict:
    rows = [row("int8", qcompiler.compile(model, calib, eval=inputs), inputs, labels)]
    base = rows[0]["sqnr_db"]
    budgets = [min(base + 3, CAP_DB), min(base + 6, CAP_DB)] if name != "outlier_convnet" else [base + 3, 25.0]
    for budget in budgets:
        recipe = {"passes": {"assign-precision": {"min_sqnr_db": round(budget, 2)}}}
        try:
            result = qcompiler.compile(model, calib, eval=inputs, pipeline="mixed", recipe=recipe)
            rows.append(row(f">= {budget:.1f} dB", result, inputs, labels))
        except qcompiler.passes.PassError as err:
            rows.append({"setting": f">= {budget:.1f} dB", "error": str(err).split(": ", 2)[-1][:120]})
    table = sensitivity(model, calib, eval=inputs)
    one_pass = float_pass_seconds(model, inputs)
    return {"name": name, "rows": rows, "sensitivity_s": table.seconds, "float_pass_s": one_pass,
            "variants": table.runs, "units": len(table.rows)}


def show(result: dict) -> None:
    print(f"\n== {result['name']} ==")
    print(f"{'setting':<12} {'SQNR':>7} {'top-1':>6} {'acc':>6} {'promoted':>8} {'int8 work':>9} "
          f"{'int kernels':>11} {'latency':>8} {'compile':>8}")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['setting']:<12} {r['error']}")
            continue
        top1 = f"{r['top1']:.1%}" if r["top1"] is not None else "-"
        acc = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "-"
        print(f"{r['setting']:<12} {r['sqnr_db']:>7.2f} {top1:>6} {acc:>6} {r['promoted']:>8} {r['int8_work']:>9.0%} "
              f"{r['int_kernels']:>11.0%} {r['latency']:>7.2f}x {r['compile_s']:>7.2f}s")
    ratio = result["sensitivity_s"] / result["float_pass_s"]
    print(f"sensitivity: {result['units']} units, {result['variants']} variants in {result['sensitivity_s']:.2f} s "
          f"= {ratio:.0f}x one float pass over the same data ({result['float_pass_s'] * 1e3:.1f} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(GOLDEN_CASES), choices=GOLDEN_CASES)
    parser.add_argument("--models", nargs="*", default=[], choices=BENCH_MODELS)
    parser.add_argument("--quick", action="store_true", help="shrunk bench models (tools/bench_models.QUICK)")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples of a bench model")
    parser.add_argument("--eval-samples", type=int, default=16, help="evaluation samples of a bench model")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = []
    for name in args.cases:
        results.append(bench(name, *golden_files(name)))
        show(results[-1])
    if args.models:
        import bench_models

        size = bench_models.QUICK if args.quick else bench_models.FULL
        with tempfile.TemporaryDirectory() as scratch:
            for name in args.models:
                case = bench_models.prepare(name, size, Path(scratch), args.samples, args.eval_samples)
                results.append(bench(name, case.model, case.calib, case.eval, None))
                show(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
