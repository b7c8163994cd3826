"""Run the fuzz harnesses of tests/fuzz under atheris for a while each and print their figures.

Each harness gets a seed corpus built from the golden cases (in a scratch folder), then
libFuzzer mutates it for `--seconds`, guided by the Python edges each input covers. A
harness whose front door lets anything but the library's own errors escape stops with the
input that did it, saved under --artifacts; the run then exits 1.

    python tools/fuzz.py                            # every harness, 60 s each
    python tools/fuzz.py --seconds 600 onnx_import  # a longer run of one
    python tools/fuzz.py --seconds 60 --seed 1      # the same mutations every time (CI)
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUZZ = Path(__file__).resolve().parent.parent / "tests" / "fuzz"
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")


def seed_corpus(name: str, folder: Path) -> int:
    """Write the harness's seeds into `folder`, one file each; returns how many."""
    sys.path.insert(0, str(FUZZ))
    try:
        module = __import__(f"fuzz_{name}")
    finally:
        sys.path.remove(str(FUZZ))
    seeds = module.seeds()
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return len(seeds)


def run(name: str, seconds: int, artifacts: Path, seed: int) -> bool:
    """One harness for `seconds`; prints its figures; False when it found an escaping exception."""
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch)
        seeds = seed_corpus(name, corpus)
        artifacts.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(FUZZ / f"fuzz_{name}.py"), str(corpus), f"-max_total_time={seconds}",
                   f"-seed={seed}", "-timeout=30", "-rss_limit_mb=4096", "-max_len=200000", "-print_final_stats=1",
                   f"-artifact_prefix={artifacts}/{name}-"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", cwd=scratch)
        elapsed = time.perf_counter() - start
    log = done.stdout + done.stderr
    statuses = _STATUS.findall(log)
    runs, cov, features, corp = (int(v) for v in statuses[-1]) if statuses else (0, 0, 0, 0)
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    runs = int(execs.group(1)) if execs else runs
    ok = done.returncode == 0
    verdict = "no escaped exception" if ok else f"FAILED (exit {done.returncode})"
    print(f"fuzz {name}: {runs} runs in {elapsed:.0f} s ({runs / max(elapsed, 1e-9):.0f} exec/s), "
          f"coverage {cov} edges, {features} features, corpus {seeds} seeds -> {corp}; {verdict}", flush=True)
    if not ok:  # the escaped exception with its traceback, else the end of libFuzzer's log
        lines = log.splitlines()
        marker = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line), None)
        shown = lines[marker:marker + 40] if marker is not None else [line for line in lines if line.strip()][-25:]
        print("\n".join(f"  {line}" for line in shown), flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("harnesses", nargs="*", metavar="HARNESS",
                        help=f"which to run (default all: {', '.join(HARNESSES)})")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per harness (default 60)")
    parser.add_argument("--seed", type=int, default=0,
                        help="libFuzzer's random seed: a fixed one makes a run repeat the same mutations, as CI "
                        "wants; 0 (default) draws a new one each run, as long runs want")
    parser.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()) / "qc-fuzz",
                        help="where a crashing input is saved")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.harnesses) - set(HARNESSES))
    if unknown:
        parser.error(f"no harness {', '.join(unknown)} (harnesses: {', '.join(HARNESSES)})")
    results = [run(name, args.seconds, args.artifacts, args.seed) for name in args.harnesses or HARNESSES]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
