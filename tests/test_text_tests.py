"""Every pass the compiler ships has text tests: a folder tests/passes/<name>/ with at least
two .qir files (a case where it fires and one where it must not), so a new pass cannot
arrive without them. Passes that test modules register for themselves are not counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompiler import passes

PASS_TESTS = Path(__file__).resolve().parent / "passes"
SHIPPED = sorted(name for name, cls in passes.registered_passes().items() if cls.__module__.startswith("qcompiler."))


def test_the_shipped_passes_are_found():
    assert {"canonicalize", "calibrate", "place-qdq"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_pass_has_text_tests(name):
    files = sorted(p.name for p in (PASS_TESTS / name).glob("*.qir"))
    assert len(files) >= 2, (f"pass {name!r} needs text tests in tests/passes/{name}/: at least one .qir file "
                             f"where it fires and one where it must not (found {files or 'none'})")
