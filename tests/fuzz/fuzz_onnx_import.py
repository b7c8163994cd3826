"""Fuzz ONNX import: any bytes give a model or a ModelLoadError (an IRError), nothing else."""

from __future__ import annotations

import harness

with harness.instrumented(__name__):
    from qcompiler import ir


def check(data: bytes) -> None:
    try:
        ir.load_model(data)
    except ir.IRError:
        pass


def seeds() -> list[bytes]:
    return [path.read_bytes() for path in sorted(harness.GOLDEN.glob("*/model.onnx")) if path.stat().st_size < 500_000]


if __name__ == "__main__":
    harness.main(check)
