"""Overrides: settings for some nodes only, by op type, torch module, name pattern or name.

1. Sections, by precedence: `by_op_type` (the qualified op type: "Softmax",
   "com.example::Op") < `by_module` (nodes whose `meta["module"]`, set by the torch
   front end, is that module or one inside it; the innermost wins) < `by_regex` (node
   names the pattern matches whole, in order) < `by_node` (a node's name; for its
   observer, a graph input's name too). `exclude` and `force` list node names that
   stay float, or are quantized where a heuristic would keep them float.
2. Settings: `observer` and the observer options (`observers.ObserverOptions`), which
   insert-observers reads from here (`observer_options`); `activations`, `precision`,
   `scheme` and `algorithms`, which apply-overrides writes onto the nodes as the marks
   `NODE_MARKS` names, beside `quantize` for exclude/force, so every pass reads them
   from the node and dumps show them.
3. Checked when made: an unknown key, a value outside its choices, an unknown observer
   or options it rejects, a regex that does not compile, a node both excluded and
   forced: a ValueError naming the section and key. Names the model lacks are checked
   by apply-overrides, which has the model.
4. `algorithms` picks, per node, which of the pipeline's accuracy algorithms (the passes
   with `Pass.algorithm` set: equalize, bias-correct, adaround, ...) may change it: a
   list of their names, written as the comma-joined mark `algorithms` ("" for none). A
   node without the mark gets every one the pipeline runs; `chosen` is the one reading.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qcompiler.ir import Node

from ..analyses.observers import ObserverOptions
from ..analyses.rules import PRECISIONS
from .base import registered_passes
from .target import ACTIVATION_DTYPES

OBSERVER_KEYS = frozenset({"observer"} | {f.name for f in dataclasses.fields(ObserverOptions)} - {"method"})
NODE_MARKS = {"activations": "activations", "precision": "precision", "scheme": "weight_scheme",  # key -> meta key
              "algorithms": "algorithms"}
_CHOICES = {"activations": ACTIVATION_DTYPES, "precision": PRECISIONS, "scheme": ("per-channel", "per-tensor")}
SETTING_KEYS = OBSERVER_KEYS | set(NODE_MARKS)


@dataclass(frozen=True)
class Overrides:
    """The override sections of rule 1, checked (rule 3)."""

    exclude: tuple[str, ...] = ()
    force: tuple[str, ...] = ()
    by_op_type: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    by_module: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    by_regex: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    by_node: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if both := sorted(set(self.exclude) & set(self.force)):
            raise ValueError(f"[overrides] {both} both excluded and forced")
        for kind, sections in (("op_type", self.by_op_type), ("module", self.by_module),
                               ("node_regex", self.by_regex), ("node", self.by_node)):
            for name, settings in sections.items():
                _check(settings, f"[overrides.{kind}.{name}]", regex=name if kind == "node_regex" else None)

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))

    def settings(self, node: Node) -> dict[str, Any]:
        """The merged settings of `node`, by precedence (rule 1)."""
        name = node.name or ""
        settings = dict(self.by_op_type.get(node.qualified_op, {}))
        module = node.meta.get("module")
        if isinstance(module, str):
            for path in sorted(self.by_module, key=len):  # outer modules first: the innermost wins
                if module == path or module.startswith(path + "."):
                    settings.update(self.by_module[path])
        for pattern, values in self.by_regex.items():
            if name and re.fullmatch(pattern, name):
                settings.update(values)
        settings.update(self.by_node.get(name, {}))
        return settings

    def node_marks(self, node: Node) -> dict[str, Any]:
        """The meta marks apply-overrides writes on `node` (rule 2)."""
        settings = self.settings(node)
        marks = {meta: settings[key] for key, meta in NODE_MARKS.items() if key in settings}
        if "algorithms" in marks:
            marks["algorithms"] = ",".join(marks["algorithms"])
        if node.name and (node.name in self.exclude or node.name in self.force):
            marks["quantize"] = node.name in self.force
        return marks


    def algorithms(self) -> dict[str, str]:
        """Each algorithm some section names (rule 4), with the first section that names it."""
        named: dict[str, str] = {}
        for kind, sections in (("op_type", self.by_op_type), ("module", self.by_module),
                               ("node_regex", self.by_regex), ("node", self.by_node)):
            for name, settings in sections.items():
                for algorithm in settings.get("algorithms", ()):
                    named.setdefault(algorithm, f"[overrides.{kind}.{name}]")
        return named


def chosen(node: Node, algorithm: str) -> bool:
    """Rule 4: whether the algorithm pass named `algorithm` may change `node`."""
    mark = node.meta.get("algorithms")
    return mark is None or algorithm in mark.split(",")


def algorithm_passes() -> list[str]:
    """The registered passes that read the `algorithms` mark (rule 4)."""
    return sorted(name for name, cls in registered_passes().items() if getattr(cls, "algorithm", False))


def observer_options(defaults: ObserverOptions, settings: Mapping[str, Any]) -> ObserverOptions:
    """`defaults` with the observer settings among `settings` applied (and checked: rule 3)."""
    changes = {("method" if key == "observer" else key): value
               for key, value in settings.items() if key in OBSERVER_KEYS}
    return dataclasses.replace(defaults, **changes) if changes else defaults


def _check(settings: Any, section: str, regex: str | None) -> None:
    if not isinstance(settings, Mapping):
        raise ValueError(f"{section} must be a table of settings")
    unknown = sorted(set(settings) - SETTING_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in {section} (expected one of: {', '.join(sorted(SETTING_KEYS))})")
    for key, allowed in _CHOICES.items():
        value = settings.get(key)
        if value is not None and value not in allowed:
            raise ValueError(f"{section} {key}: {value!r} is not one of {', '.join(allowed)}")
    algorithms = settings.get("algorithms")
    if algorithms is not None:
        known = algorithm_passes()
        if not isinstance(algorithms, list | tuple) or not all(isinstance(a, str) for a in algorithms):
            raise ValueError(f"{section} algorithms must be a list of pass names ({', '.join(known)})")
        if unknown := [a for a in algorithms if a not in known]:
            raise ValueError(f"{section} algorithms: {unknown[0]!r} is not one of {', '.join(known)}")
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as err:
            raise ValueError(f"{section}: not a regular expression: {err}") from None
    try:
        observer_options(ObserverOptions(), settings)  # builds the observer once: bad options fail here
    except (TypeError, ValueError) as err:
        raise ValueError(f"{section} observer: {err.args[0] if err.args else err}") from None
