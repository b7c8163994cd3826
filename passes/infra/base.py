"""The pass contract and the registry every pass, ours or a user's, goes through.

A pass is a small class: a kebab-case `name`, a docstring whose first line is its
summary, an `Options` dataclass (typed, defaulted: the pipeline text sets them), and
`run(model, ctx) -> bool` saying whether it changed the model. Statistics are counters
a pass bumps as it works (`self.stats["folded"] += 1`); the timing instrument prints them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

from qcompiler.ir.errors import IRError

from .registry import Registry

if TYPE_CHECKING:
    from qcompiler.ir import Model

    from .context import PassContext


class PassError(Exception):
    """A pass failed; says which one and what ran before it."""


class PassCrash(PassError):
    """A pass raised an exception that is not about its input (a bug): the message names the
    pass and, where a CrashReproducer ran, the reproducer file."""


def about_the_input(error: BaseException) -> bool:
    """Whether a pass's exception is about what it was given (data, options, the model), not a bug."""
    return isinstance(error, (PassError, IRError)) and not isinstance(error, PassCrash)


class PipelineError(Exception):
    """A pipeline text or its options are wrong; carries the column in the text."""

    def __reduce__(self):  # travels from worker processes
        return type(self), (self.text, self.column, self.message)

    def __init__(self, text: str, column: int, message: str) -> None:
        self.text, self.column, self.message = text, column, message
        pointer = " " * (column - 1) + "^"
        super().__init__(f"pipeline column {column}: {message}\n  {text}\n  {pointer}")


@dataclasses.dataclass
class NoOptions:
    """For passes without options."""


class Pass:
    """Base class of every pass. Subclasses set `name`, `Options` and implement `run`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs: ClassVar[frozenset[str]] = frozenset()  # facts (contracts.FACTS) that must hold before it runs
    gives: ClassVar[frozenset[str]] = frozenset()  # facts that hold after it ran
    refuses: ClassVar[frozenset[str]] = frozenset()  # facts that must not hold yet: it has to run before them
    breaks: ClassVar[frozenset[str]] = frozenset()  # facts that no longer hold after it ran
    reads: ClassVar[frozenset[str]] = frozenset()  # meta keys (meta.py) it reads
    writes: ClassVar[frozenset[str]] = frozenset()  # meta keys it sets, changes or removes on what it found
    algorithm: ClassVar[bool] = False  # an accuracy algorithm the recipe picks per node (overrides.py rule 4)

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        self.stats: Counter[str] = Counter()

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def requires(self, model: Model, ctx: PassContext) -> None:
        """Check preconditions; raise PassError when the model is not ready for this pass."""

    def run(self, model: Model, ctx: PassContext) -> bool:
        raise NotImplementedError


_PASSES: Registry[type[Pass]] = Registry("pass")


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass known to pipelines and `qc passes`.

    Refuses a second pass under the same name, a name that is not kebab-case, and an
    Options that is not a dataclass.
    """
    return _PASSES.register(cls)


def get_pass(name: str) -> type[Pass]:
    return _PASSES.get(name)


def registered_passes() -> dict[str, type[Pass]]:
    return _PASSES.all()
