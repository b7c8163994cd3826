"""What one sensitivity variant costs, with shared constants and codes against emitting it from scratch.

For people, not CI. The encoder stand-ins (tools/encoder_standins.py) are prepared and
calibrated as `qc compile --pipeline mixed` prepares them; then, for each mode in turn,
an Evaluator (passes/analyses/sensitivity.py) measures the all-int8 variant once (it
fills what the variants share) and then `--variants` variants, each with one unit at
fp32, as sensitivity runs them. `shared` is the default (rule 7: mapped constants,
weight codes computed once); `scratch` emits every variant from the calibrated model
alone. The modes alternate for `--rounds` rounds, so load on the machine hits both; the
figures of the two modes must be equal, and the script says whether they are.

    python tools/bench_variants.py --models minilm bert-base --rows 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import encoder_standins  # noqa: E402

from qcompiler import passes  # noqa: E402
from qcompiler.analyze import split_pipeline  # noqa: E402
from qcompiler.compiler import prepare  # noqa: E402
from qcompiler.ir.evaluate import first_rows  # noqa: E402
from qcompiler.passes.analyses.sensitivity import Evaluator, units  # noqa: E402


def bench(name: str, work: Path, rows: int, count: int, rounds: int) -> None:
    case = encoder_standins.prepare(name, work, 32, rows)
    job = prepare(str(case.model), str(case.calib), pipeline="mixed", eval=str(case.eval))
    calibrating, emitting = split_pipeline(job.steps)
    passes.PassManager(",".join(map(str, calibrating))).run(job.model, job.context([]))
    chosen = units(job.model)[:count]
    seconds: dict[str, list[float]] = {"shared": [], "scratch": []}
    figures = {}
    for _ in range(rounds):
        for mode in seconds:
            evaluator = Evaluator(job.model, ",".join(map(str, emitting)), first_rows(job.evaluation, rows),
                                  target=job.target, share=mode == "shared")
            evaluator.measure({})
            start = time.perf_counter()
            figures[mode] = [evaluator.measure({unit: "fp32"}) for unit in chosen]
            seconds[mode].append((time.perf_counter() - start) / len(chosen))
    shared, scratch = (statistics.median(seconds[m]) for m in ("shared", "scratch"))
    print(f"{name}: {len(chosen)} variants on {rows} rows, median of {rounds} rounds: shared {shared:.3f} s, "
          f"scratch {scratch:.3f} s per variant ({scratch / shared:.2f}x); "
          f"same figures: {'yes' if figures['shared'] == figures['scratch'] else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["minilm"], choices=sorted(encoder_standins.SIZES))
    parser.add_argument("--rows", type=int, default=8, help="evaluation rows each variant runs")
    parser.add_argument("--variants", type=int, default=6, help="variants timed per round and mode")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, help="cache of models and data (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            bench(name, args.work_dir or Path(scratch), args.rows, args.variants, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
