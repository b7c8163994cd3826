"""Pipelines as text: parse with lark, check options against each pass, print back.

`str(parse_pipeline(text))` gives the text back in canonical form (no spaces), which is
what dump headers, model metadata and golden files record.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal, Union

import lark

from .base import Pass, PipelineError, get_pass

_PIPELINES: dict[str, str] = {}


def register_pipeline(name: str, text: str) -> None:
    """Name a pipeline so it can be run (or nested) by that name; names are unique."""
    if name in _PIPELINES and _PIPELINES[name] != text:
        raise ValueError(f"pipeline name {name!r} is already registered as {_PIPELINES[name]!r}")
    _PIPELINES[name] = text


def registered_pipelines() -> dict[str, str]:
    return dict(sorted(_PIPELINES.items()))


@dataclass
class PassStep:
    """One pass with the options the text gave (raw text kept for printing back)."""

    name: str
    raw_options: list[tuple[str, list[str]]] = field(default_factory=list)
    column: int = 1
    option_columns: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.raw_options:
            return self.name
        return f"{self.name}{{{_format_options(self.raw_options)}}}"

    def instantiate(self, text: str) -> Pass:
        try:
            cls = get_pass(self.name)
        except KeyError as err:
            raise PipelineError(text, self.column, err.args[0]) from None
        return cls(build_options(cls, self.raw_options, text, self.option_columns))


@dataclass
class Repeat:
    """Run `body` until no pass in it changes the model, at most `max_iterations` times."""

    body: list[PassStep | Repeat | NamedPipeline]
    max_iterations: int = 10
    raw_options: list[tuple[str, list[str]]] = field(default_factory=list)

    def __str__(self) -> str:
        options = f"{{{_format_options(self.raw_options)}}}" if self.raw_options else ""
        return f"repeat{options}({','.join(map(str, self.body))})"


@dataclass
class NamedPipeline:
    """A registered pipeline used by name; prints back as its name."""

    name: str
    body: list[PassStep | Repeat | NamedPipeline]
    column: int = 1  # where the name stands in the text that used it

    def __str__(self) -> str:
        return self.name


@dataclass
class Pipeline:
    steps: list[PassStep | Repeat | NamedPipeline]
    text: str

    def __str__(self) -> str:
        return ",".join(map(str, self.steps))

    def pass_names(self) -> list[str]:
        """The passes in running order, named pipelines and repeat groups unfolded (a group's once)."""
        return [step.name for step in _pass_steps(self.steps)]

    def options_of(self, name: str) -> Any:
        """The options of the first step running pass `name`, None when no step runs it: how a pass
        reads the options of one that follows it."""
        step = next((step for step in _pass_steps(self.steps) if step.name == name), None)
        return step.instantiate(self.text).options if step is not None else None


def _pass_steps(steps: list) -> Iterator[PassStep]:
    for step in steps:
        if isinstance(step, PassStep):
            yield step
        else:
            yield from _pass_steps(step.body)


def parse_pipeline(text: str) -> Pipeline:
    """Parse and check a pipeline: unknown passes and bad options fail here, with a column."""
    return Pipeline(_parse(text, set()), text)


def _parse(text: str, expanding: set[str]) -> list:
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        at_end = isinstance(err, lark.exceptions.UnexpectedEOF) or getattr(err, "token", None) is not None and err.token.type == "$END"
        raise PipelineError(text, len(text) + 1 if at_end else err.column, _describe(err, at_end)) from None
    steps = [_step(child, text, expanding) for child in tree.children if child is not None]
    return steps


def _step(tree: lark.Tree, text: str, expanding: set[str]) -> PassStep | Repeat | NamedPipeline:
    if tree.data == "repeat":
        options_tree = tree.children[0] if len(tree.children) == 2 else None
        raw, columns = _raw_options(options_tree, text)
        body_tree = tree.children[-1]
        body = [_step(c, text, expanding) for c in body_tree.children if c is not None]
        (max_iterations,) = _typed_repeat_options(raw, text, columns)
        return Repeat(body, max_iterations, raw)
    name_token = tree.children[0]
    raw, columns = _raw_options(tree.children[1] if len(tree.children) == 2 else None, text)
    name = str(name_token)
    if name in _PIPELINES and not raw:
        if name in expanding:
            raise PipelineError(text, name_token.column, f"pipeline {name!r} includes itself")
        return NamedPipeline(name, _parse(_PIPELINES[name], expanding | {name}), name_token.column)
    step = PassStep(name, raw, name_token.column, columns)
    step.instantiate(text)  # checks the pass and its options now, with the column
    return step


def _raw_options(tree: lark.Tree | None, text: str) -> tuple[list[tuple[str, list[str]]], dict[str, int]]:
    """The options as written (values after a key until the next key), and each key's column."""
    options: list[tuple[str, list[str]]] = []
    columns: dict[str, int] = {}
    for item in tree.children if tree is not None else ():
        if item is None:
            continue
        if isinstance(item, lark.Tree):  # keyed: `key=` then its first value
            key_token, atom = item.children
            key = key_token.rstrip("=").rstrip()
            options.append((key, [str(atom)]))
            columns.setdefault(key, key_token.column)
        elif not options:
            raise PipelineError(text, item.column, f"value {str(item)!r} has no option name (expected key=value)")
        else:
            options[-1][1].append(str(item))
    return options, columns


def _format_options(raw: list[tuple[str, list[str]]]) -> str:
    return ",".join(f"{key}={','.join(atoms)}" for key, atoms in raw)


def _typed_repeat_options(raw: list[tuple[str, list[str]]], text: str, columns: dict[str, int]) -> tuple[int]:
    values = {"max": 10}
    for key, atoms in raw:
        column = columns[key]
        if key != "max":
            raise PipelineError(text, column, f"repeat has one option, max; not {key!r}")
        values["max"] = _convert(int, atoms, "pass 'repeat'", key, text, column)
        if values["max"] < 1:
            raise PipelineError(text, column, "repeat{max=...} must be at least 1")
    return (values["max"],)


def build_options(
    cls: type[Pass], raw: list[tuple[str, list[str]]], text: str = "", columns: dict[str, int] | None = None,
    kind: str = "pass",
) -> Any:
    """The pass's Options dataclass filled from raw text values, each checked against its type; `kind`
    names what has the options in messages (an observer's options are read the same way)."""
    owner = f"{kind} {cls.name!r}"
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    hints = typing.get_type_hints(cls.Options)
    values: dict[str, Any] = {}
    columns = columns or {}
    column = min(columns.values(), default=1)
    for key, atoms in raw:
        column = columns.get(key, column)
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(fields) or "none"
            raise PipelineError(text, column, f"{owner} has no option {key!r} (options: {known})")
        if name in values:
            raise PipelineError(text, column, f"option {key!r} of {owner} is given twice")
        values[name] = _convert(hints[name], atoms, owner, key, text, column)
    try:
        return cls.Options(**values)
    except (TypeError, ValueError) as err:
        raise PipelineError(text, column, f"{owner}: {err}") from None


def _convert(hint: Any, atoms: list[str], owner: str, key: str, text: str, column: int) -> Any:
    try:
        words = [json.loads(a) if a.startswith('"') else a for a in atoms]
    except json.JSONDecodeError as err:
        raise PipelineError(text, column, f"option {key!r} of {owner}: bad string: {err.msg}") from None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if words == ["none"] and len(arms) < len(typing.get_args(hint)):
            return None
        hint, origin = arms[0], typing.get_origin(arms[0])
    try:
        if origin in (tuple, list):
            (element,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
            items = [_scalar(element, w) for w in words]
            return tuple(items) if origin is tuple else items
        if len(words) != 1:
            raise ValueError(f"takes one value, not a list of {len(words)}")
        return _scalar(hint, words[0])
    except ValueError as err:
        raise PipelineError(text, column, f"option {key!r} of {owner}: {err}") from None


def _scalar(hint: Any, word: str) -> Any:
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if word not in choices:
            raise ValueError(f"{word!r} is not one of {', '.join(map(str, choices))}")
        return word
    if hint is bool:
        if word not in ("true", "false"):
            raise ValueError(f"expected true or false, not {word!r}")
        return word == "true"
    if hint in (int, float):
        try:
            return hint(word)
        except ValueError:
            raise ValueError(f"expected {'an integer' if hint is int else 'a number'}, not {word!r}") from None
    if hint is str:
        return word
    raise ValueError(f"unsupported option type {hint!r}")


def _describe(err: lark.exceptions.UnexpectedInput, at_end: bool) -> str:
    if at_end:
        return "unexpected end of pipeline (unbalanced braces or parentheses?)"
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        return f"unexpected character {err.char!r}"
    return f"unexpected {str(err.token)!r}"


@cache
def _parser() -> lark.Lark:
    grammar = resources.files(__package__).joinpath("pipeline.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)
