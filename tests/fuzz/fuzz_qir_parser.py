"""Fuzz the text IR parser: any text parses to a model or raises an IRError (ParseError), nothing else."""

from __future__ import annotations

import harness

with harness.instrumented(__name__):
    from qcompiler import ir


def check(data: bytes) -> None:
    try:
        ir.parse_model(data.decode("utf-8", errors="replace"))
    except ir.IRError:
        pass


_SMALL = 30_000  # bytes of text: larger seeds slow every mutation down


def seeds() -> list[bytes]:
    """Dumps of the golden models (constants inline where small, else summarized) and the compiled dumps."""
    found = []
    for path in sorted(harness.GOLDEN.glob("*/model.onnx")):
        model = ir.load_model(path)
        inline = ir.print_model(model, weights="inline").encode()
        found.append(inline if len(inline) < _SMALL else ir.print_model(model, weights="summary").encode())
    found += [path.read_bytes() for path in sorted(harness.GOLDEN.glob("*/compiled.qir"))]
    return [seed for seed in found if len(seed) < _SMALL]


if __name__ == "__main__":
    harness.main(check)
