"""What every fuzz harness shares: run `check` under atheris (coverage-guided), or replay inputs.

A harness module defines `check(data: bytes)`, which feeds the bytes to one front door of
the library and catches the library's own error types for that door; anything else that
escapes is a bug, and atheris stops on it with the input that caused it. `seeds()` gives
the seed corpus, built from the golden cases.

    python tests/fuzz/fuzz_onnx_import.py CORPUS_DIR -max_total_time=60   # fuzz (libFuzzer flags)
    python tools/fuzz.py --seconds 60                                       # every harness, with figures
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent.parent.parent / "golden"


def instrumented(module_name: str):
    """Around a harness's imports: when it runs as the fuzzer (`__main__`), qcompiler's modules
    report the edges they take. Only qcompiler's: instrumenting numpy, onnx and torch as well
    costs minutes at start-up and guides mutations toward code the harness does not test."""
    if module_name != "__main__":
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["qcompiler"])


def main(check: Callable[[bytes], None]) -> None:
    import atheris

    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
