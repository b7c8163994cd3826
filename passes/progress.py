"""A one-line progress report for long passes: count, rate, ETA; on a terminal only."""

from __future__ import annotations

import sys
import time
from typing import TextIO


SWITCH = {"auto": None, "on": True, "off": False}  # a pass's `progress` option -> Progress(enabled=...)


class Progress:
    """Rewrites one stderr line at most every `interval` seconds; silent when not a terminal.

    `enabled=None` means: only if the stream is a terminal, so logs and CI stay clean.
    """

    def __init__(self, label: str, total: int | None, unit: str = "samples", *,
                 enabled: bool | None = None, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label, self.total, self.unit, self.interval = label, total, unit, interval
        self.done = 0
        self._start = self._last = time.perf_counter()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self._start, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = ""
        if self.total and rate > 0:
            eta = f"  ETA {max(self.total - self.done, 0) / rate:.0f}s"
        return f"{self.label}: {count} {self.unit}  {rate:.1f} {self.unit}/s{eta}"

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
