"""The progress bar: count, rate and ETA on a terminal; nothing in logs."""

from __future__ import annotations

import io

from qcompiler.passes.infra.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_reports_count_rate_and_eta_on_a_terminal():
    stream = Terminal()
    progress = Progress("calibrate", 10, "batches", stream=stream, interval=0.0)
    for _ in range(4):
        progress.advance()
    progress.close()
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith("calibrate:  40%|") and "| 4/10 [" in last and " batches/s]" in last, last
    assert progress.done == 4


def test_progress_is_silent_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress("calibrate", 3, stream=stream, interval=0.0)
    progress.advance(3)
    progress.close()
    assert stream.getvalue() == "" and progress.done == 3
