"""Benchmark the pass manager: the default pipeline by graph size, and what instruments cost.

For each size it imports the generated graph of tools/bench_ir.py once per
configuration and times `PassManager(pipeline).run` with: no instruments, the verifier
after each pass, the timing table, the crash reproducer (a text snapshot before each
pass), and all of them together (what `qc opt` runs by default plus --timing).
Figures are best-of-N seconds, microseconds per node, and the ratio to no instruments.

    python tools/bench_passes.py --sizes 10000 50000 --repeat 3
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_ir import make_model

from qcompiler import ir, passes

CONFIGS: dict[str, Callable[[Path], list[passes.Instrument]]] = {
    "bare": lambda _: [],
    "verifier": lambda _: [passes.Verifier()],
    "timing": lambda _: [passes.Timing(stream=io.StringIO())],
    "reproducer": lambda d: [passes.CrashReproducer(d)],
    "all": lambda d: [passes.CrashReproducer(d), passes.Verifier(), passes.Timing(stream=io.StringIO())],
}


def run_once(proto, pipeline: str, instruments: list[passes.Instrument]) -> tuple[float, int]:
    """Seconds for the pipeline alone (import excluded), and the node count after it."""
    model = ir.load_model(proto, infer_shapes=False)
    manager = passes.PassManager(pipeline)
    start = time.perf_counter()
    manager.run(model, passes.PassContext(instruments=instruments))
    return time.perf_counter() - start, len(model.graph.nodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per figure")
    parser.add_argument("--pipeline", default="default")
    args = parser.parse_args(argv)
    print(f"pipeline: {passes.parse_pipeline(args.pipeline)}")
    print(f"{'nodes':>7} {'after':>7} " + " ".join(f"{name:>20}" for name in CONFIGS))
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            proto = make_model(size)
            cells, after = [], 0
            base = None
            for name, make in CONFIGS.items():
                seconds, after = min(run_once(proto, args.pipeline, make(Path(scratch))) for _ in range(args.repeat))
                base = base or seconds
                cells.append(f"{seconds:7.2f}s {seconds / size * 1e6:5.0f}us x{seconds / base:4.2f}")
            print(f"{len(proto.graph.node):>7} {after:>7} " + " ".join(f"{c:>20}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
