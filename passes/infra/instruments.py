"""Instruments observe the pass manager: print or dump IR, time passes, verify, keep a reproducer.

They hang on the PassContext (never globals), and the manager calls them around each
pass. Each writes what it produces to a stream or a folder the user chose.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from qcompiler import ir
from qcompiler.ir.fileio import atomic_output

from .base import Pass, PassError, about_the_input
from .meta import meta_entries, meta_key

if TYPE_CHECKING:
    from .context import PassContext


@dataclass
class PassEvent:
    """Where the manager is: the pass, its 1-based position among the passes run, and the pipeline."""

    pass_: Pass
    index: int
    pipeline: str
    remaining: str = ""


class Instrument:
    """Override the hooks you need; all default to doing nothing."""

    def before_pass(self, model: ir.Model, event: PassEvent, ctx: PassContext) -> None: ...

    def after_pass(self, model: ir.Model, event: PassEvent, ctx: PassContext, changed: bool) -> None: ...

    def on_error(self, error: BaseException, event: PassEvent, ctx: PassContext) -> str | None:
        """Called when a pass raises; may return a line to add to the error message."""
        return None

    def finish(self, ctx: PassContext) -> None: ...


def dump_header(when: str, event: PassEvent, changed: bool | None = None) -> str:
    state = "" if changed is None else f" changed={'true' if changed else 'false'}"
    return f"// ----- IR {when} {event.pass_.name} ({event.index}){state} -----\n// pipeline: {event.pipeline}\n"


@dataclass
class PrintIR(Instrument):
    """Print the IR before and/or after the named passes ("all" for every pass).

    With `only_changed`, an after-dump is skipped when the pass reports no change.
    """

    before: frozenset[str] = frozenset()
    after: frozenset[str] = frozenset()
    only_changed: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stderr)

    def _wants(self, names: frozenset[str], pass_: Pass) -> bool:
        return "all" in names or pass_.name in names

    def before_pass(self, model, event, ctx) -> None:
        if self._wants(self.before, event.pass_):
            self.stream.write(dump_header("before", event) + ir.print_model(model))

    def after_pass(self, model, event, ctx, changed) -> None:
        if self._wants(self.after, event.pass_) and (changed or not self.only_changed):
            self.stream.write(dump_header("after", event, changed) + ir.print_model(model))


@dataclass
class DumpDir(Instrument):
    """Write `NNN_<pass>.qir` after every pass (with `NNN_<pass>.npz` for large constants).

    Each file parses back (`qc opt 003_fuse.qir ...`), so any step can be replayed.
    """

    directory: Path

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def after_pass(self, model, event, ctx, changed) -> None:
        stem = f"{event.index:03d}_{event.pass_.name}"
        write_reproducible(model, self.directory / f"{stem}.qir", dump_header("after", event, changed))


def write_reproducible(model: ir.Model, path: Path, header: str) -> None:
    """Text that parses back to `model`: large constants go to a .npz beside it."""
    weights: dict = {}
    weights_path = path.with_suffix(".npz")
    text = ir.print_model(model, weights=weights, weights_file=weights_path.name)
    if weights:
        ir.save_weights(weights, weights_path)
    else:
        text = text.split("\n", 1)[1]  # no weights line when nothing was elided
    with atomic_output(path) as staged:
        staged.write_text(header + text, encoding="utf-8")


@dataclass
class Timing(Instrument):
    """Per-pass wall time and statistics, printed as a table when the pipeline ends."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    rows: list[tuple[str, float, bool, Counter]] = field(default_factory=list)

    def before_pass(self, model, event, ctx) -> None:
        self._start = time.perf_counter()

    def after_pass(self, model, event, ctx, changed) -> None:
        self.rows.append((event.pass_.name, time.perf_counter() - self._start, changed, Counter(event.pass_.stats)))

    def finish(self, ctx) -> None:
        self.stream.write(self.table())

    def table(self) -> str:
        total = sum(seconds for _, seconds, _, _ in self.rows) or 1e-12
        lines = [f"{'pass':<24}{'seconds':>10}{'share':>8}  changed  statistics"]
        for name, seconds, changed, stats in self.rows:
            counters = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
            lines.append(f"{name:<24}{seconds:>10.4f}{seconds / total:>8.1%}  {'yes' if changed else 'no':<7}  {counters}")
        lines.append(f"{'total':<24}{total:>10.4f}")
        return "\n".join(lines) + "\n"


class Verifier(Instrument):
    """Check the IR's invariants after every pass, and its meta contract (meta.py): the declared keys
    hold values of their type, and on the nodes and values that were there before, the pass changed
    no key it does not declare in `writes`. A failure names the pass."""

    def before_pass(self, model, event, ctx) -> None:
        self._owners = _owners(model)
        self._before = {(owner, key): value for _, owner, key, value in meta_entries(model)}

    def after_pass(self, model, event, ctx, changed) -> None:
        name = f"pass {event.pass_.name!r} ({event.index})"
        try:
            ir.verify_model(model)
        except ir.VerifyError as err:
            raise PassError(f"the IR is invalid after {name}: {err}") from None
        writes, before, owners = event.pass_.writes, self._before, self._owners
        seen = set()
        for kind, owner, key, value in meta_entries(model):
            declared = meta_key(kind, key)
            problem = declared.problem(value) if declared is not None else None
            if problem is not None:
                raise PassError(f"meta {key!r} of {kind} {_label(owner)} {problem} after {name}")
            seen.add((owner, key))
            old = before.get((owner, key), _ABSENT)
            if key not in writes and owner in owners and old is not value and old != value:
                raise PassError(f"{name} changed meta {key!r} of {kind} {_label(owner)} without declaring "
                                f"{key!r} in its `writes`")
        now = _owners(model)
        for owner, key in before.keys() - seen:
            if key not in writes and owner in now:
                raise PassError(f"{name} removed meta {key!r} of {_label(owner)} without declaring "
                                f"{key!r} in its `writes`")


_ABSENT = object()


def _owners(model) -> set:
    return {*model.graph.all_nodes(), *model.graph.all_values()}


def _label(owner) -> str:
    return repr(owner.name or owner.op_type) if isinstance(owner, ir.Node) else repr(owner.name)


@dataclass
class CrashReproducer(Instrument):
    """Keep the IR from before each pass; when one crashes, write it with the rest of the pipeline.

    The file is a .qir whose first lines say which pass failed and the pipeline left to
    run: `qc opt FILE --pipeline "<remaining>"` replays the crash.
    """

    directory: Path
    written: Path | None = None

    def before_pass(self, model, event, ctx) -> None:
        self._weights: dict = {}
        self._text = ir.print_model(model, weights=self._weights, weights_file="")

    def on_error(self, error, event, ctx) -> str | None:
        if about_the_input(error):
            return None  # the message says what to fix; a reproducer is for bugs
        directory = Path(self.directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"qc-crash-{event.pass_.name}.qir"
        weights_path = path.with_suffix(".npz")
        text = self._text.split("\n", 1)[1]
        if self._weights:
            ir.save_weights(self._weights, weights_path)
            text = f'weights "{weights_path.name}"\n' + text
        header = (
            f"// reproducer: pass {event.pass_.name!r} ({event.index}) raised {type(error).__name__}: {error}\n"
            f'// replay: qc opt {path.name} --pipeline "{event.remaining}"\n'
        )
        with atomic_output(path) as staged:
            staged.write_text(header + text, encoding="utf-8")
        self.written = path
        return f"reproducer written to {path}"
