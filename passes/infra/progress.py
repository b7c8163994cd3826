"""What long work shows on the terminal: progress bars (tqdm, on a terminal only), and nothing of the
libraries it calls (`silenced`)."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

SWITCH = {"auto": None, "on": True, "off": False}  # a pass's `progress` option -> Progress(enabled=...)


class Progress:
    """A tqdm bar on stderr: count, bar, rate and ETA when the total is known.

    `enabled=None` means: only if the stream is a terminal, so logs and CI stay clean.
    `done` counts even when the bar is off, for callers that report the total after.
    """

    def __init__(self, label: str, total: int | None, unit: str = "samples", *,
                 enabled: bool | None = None, stream: TextIO | None = None, interval: float = 0.2) -> None:
        stream = stream if stream is not None else sys.stderr
        self.enabled = stream.isatty() if enabled is None else enabled
        self.done = 0
        self._bar = tqdm(total=total, desc=label or None, unit=f" {unit}", file=stream, disable=not self.enabled,
                         mininterval=interval, dynamic_ncols=True, leave=True)

    def advance(self, count: int = 1) -> None:
        self.done += count
        self._bar.update(count)

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def silenced(*loggers: str) -> Iterator[None]:
    """These loggers at ERROR and warnings ignored for the block: libraries that log and warn on every
    call (torch's exporters, Ray as it connects) do not bury the compiler's own output or its one error line."""
    found = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in found]
    for logger in found:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(found, levels):
            logger.setLevel(level)
