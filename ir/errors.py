"""Errors the IR raises for bad input; each message names the input and the place."""

from __future__ import annotations


class IRError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class VerifyError(IRError):
    """A graph breaks an invariant (SSA, order, use-lists, types)."""

    def __reduce__(self):  # travels from worker processes
        return type(self), (self.problems,)

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:10]
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        super().__init__("invalid graph:\n  " + "\n  ".join(shown) + more)


class ModelLoadError(IRError):
    """An ONNX model that cannot be read or lowered into the IR."""


class ExportError(IRError):
    """An IR model that cannot be written as ONNX."""


class EvaluationError(IRError):
    """ONNX Runtime could not evaluate part of a graph (an op or type it lacks)."""


class ParseError(IRError):
    """Text IR that does not parse; carries the source, line and column."""

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        self.source, self.line, self.column, self.message = source, line, column, message
        super().__init__(f"{source}:{line}:{column}: {message}")

    def __reduce__(self):  # travels from worker processes
        return type(self), (self.source, self.line, self.column, self.message)
