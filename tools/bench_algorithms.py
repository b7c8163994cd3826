"""The accuracy algorithms on the conv stand-ins, alone and combined: output SQNR, task score, compile time.

For people, not CI. Each stand-in of tools/conv_standins.py (trained once, cached in
--work-dir) is compiled by qcompiler.compile on this machine's target with each pipeline
of PIPELINES, the searching passes bounded by `--budget` seconds each. Columns: the
output SQNR on the evaluation samples (the compile report's, from ONNX Runtime), the task
measure of conv_standins rule 5 against the float model's outputs and against the labels,
and the compile time.

    python tools/bench_algorithms.py --models mobilenetv3 db-detector crnn --budget 60
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conv_standins  # noqa: E402

import qcompiler  # noqa: E402
from qcompiler.ir.evaluate import open_session  # noqa: E402

_HEAD = "legalize-opset,freeze-weight-inputs,apply-overrides,canonicalize,fuse"
_TAIL = "place-qdq,fold-weights,quantize-embeddings,cleanup"
PIPELINES = {  # label: pipeline text, {budget} standing for the searching passes' time budget
    "int8": "int8",
    "ranges": f"{_HEAD},insert-observers,calibrate,choose-ranges{{{{time_budget_s={{budget}}}}}},{_TAIL}",
    "adaround": f"{_HEAD},insert-observers,calibrate,adaround{{{{time_budget_s={{budget}}}}}},bias-correct,{_TAIL}",
    "adaquant": f"{_HEAD},insert-observers,calibrate,adaquant{{{{time_budget_s={{budget}}}}}},{_TAIL}",
    "equalized": "int8-equalized",
    "equalized+adaround": f"{_HEAD},equalize,insert-observers,calibrate,adaround{{{{time_budget_s={{budget}}}}}},"
                          f"bias-correct,{_TAIL}",
    "equalized+ranges": f"{_HEAD},equalize,insert-observers,calibrate,choose-ranges{{{{time_budget_s={{budget}}}}}},"
                        f"bias-correct,{_TAIL}",
}


def bench(name: str, work: Path, calib: int, evaluate: int, budget: float, labels: list[str]) -> None:
    case = conv_standins.prepare(name, work, calib, evaluate, log=print)
    truth = conv_standins.load_labels(case)
    with np.load(case.eval) as data:
        inputs = data["x"]
    float_output = open_session(str(case.model)).run(None, {"x": inputs})[0]
    measure = conv_standins.TASKS[name].measure
    print(f"\n== {name}: {calib} calibration / {evaluate} evaluation samples; task measure {measure} ==")
    print(f"{'pipeline':<20} {'SQNR dB':>8} {'vs float %':>10} {'vs labels %':>11} {'compile s':>9}")
    base = conv_standins.score(name, float_output, float_output, truth)
    print(f"{'float':<20} {'-':>8} {100 * base['vs_float']:>10.1f} {100 * base['vs_labels']:>11.1f} {'-':>9}")
    for label in labels:
        start = time.perf_counter()
        result = qcompiler.compile(str(case.model), str(case.calib), eval=str(case.eval),
                                   pipeline=PIPELINES[label].format(budget=budget))
        seconds = time.perf_counter() - start
        output = open_session(result.model).run(None, {"x": inputs})[0]
        scores = conv_standins.score(name, output, float_output, truth)
        print(f"{label:<20} {result.report.outputs[0].sqnr_db:>8.2f} {100 * scores['vs_float']:>10.1f} "
              f"{100 * scores['vs_labels']:>11.1f} {seconds:>9.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=conv_standins.TASKS, default=list(conv_standins.TASKS))
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--samples", type=int, default=64, help="calibration samples")
    parser.add_argument("--eval-samples", type=int, default=200, help="evaluation samples, measured on")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per searching pass (time_budget_s)")
    parser.add_argument("--work-dir", type=Path, help="cache of trained models and data (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            bench(name, args.work_dir or Path(scratch), args.samples, args.eval_samples, args.budget, args.pipelines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
