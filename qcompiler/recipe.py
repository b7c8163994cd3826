"""Recipes: every setting of a compile in one TOML file a user can review and pin.

    target = "ort-cpu"                  # or "tensorrt"
    pipeline = "int8"                   # pipeline text or a registered name (default: int8)

    [passes.insert-observers]           # options of any pass, as in pipeline text
    method = "percentile"
    percentile = 99.99

    [passes.fold-weights]
    per_channel = true

    [overrides]
    exclude = ["head"]                  # node names that stay float
    force = ["residual_3"]              # quantized even where a heuristic keeps them float

    [overrides.op_type.Softmax]         # settings for every node of an op type ...
    observer = "minmax"

    [overrides.module."encoder.layer.3"]   # ... for nodes a torch module (or its children) produced ...
    precision = "w8a16"

    [overrides.node_regex."/encoder/.*/MatMul"]   # ... for nodes whose whole name matches ...
    precision = "fp16"

    [overrides.node.conv1]              # ... and for one node (wins over both)
    observer = "percentile"
    percentile = 99.9
    activations = "int16"
    scheme = "per-tensor"

1. `[passes.NAME]` options apply to every step of that pass in the pipeline, unless the
   pipeline text sets the same option on the step: what was written for one run beats
   the file. Each is checked against the pass's Options when the recipe loads.
2. An override's `observer` and observer options go to insert-observers (by_op_type,
   by_node; a regex section becomes by_node entries for the nodes it matches);
   `activations` (uint8, int8, uint16, int16) becomes the node's `meta["activations"]`,
   which place-qdq reads; `precision` (int8, dynamic, w8a16, fp16, fp32: rules.PRECISIONS) its
   `meta["precision"]`, a level assign-precision keeps; `scheme` (per-channel,
   per-tensor) its `meta["weight_scheme"]`, which fold-weights reads. `exclude` and
   `force` become `meta["quantize"]` false/true on the nodes they name, which every
   quantizing pass reads (static, dynamic, weight-only, fp16); insert-observers gets them
   too, so a recipe given to it alone still applies.
   A module section applies to nodes whose `meta["module"]` (the torch front end sets
   it) is that module or one inside it. Precedence: op type < module (the innermost
   wins) < node_regex (in file order) < node.
3. An unknown key, pass, option or a value of the wrong type is an error naming the
   file, the section and the key; a regex that does not compile too.
4. `overrides_toml(model)` writes the levels a compile chose (assign-precision's marks)
   as `[overrides.node."NAME"]` sections: reviewed, edited and passed back with
   --recipe, they pin the same choice.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcompiler import ir, passes
from qcompiler.passes.observers import get_observer
from qcompiler.passes.rules import PRECISIONS
from qcompiler.passes.pipeline import NamedPipeline, PassStep, Pipeline, Repeat, build_options

_TOP_KEYS = frozenset({"target", "pipeline", "passes", "overrides"})
_OVERRIDE_KEYS = frozenset({"exclude", "force", "op_type", "module", "node_regex", "node"})
_OBSERVER_OPTIONS = frozenset({"percentile", "bins", "quantized_bins", "bits", "averaging_constant"})
_ACTIVATIONS = frozenset({"uint8", "int8", "uint16", "int16"})
_SCHEMES = frozenset({"per-channel", "per-tensor"})
_NODE_MARKS = {"activations": "activations", "precision": "precision", "scheme": "weight_scheme"}  # key -> meta
_PLAIN_WORD = re.compile(r"[^,{}()=\s\"]+")


class RecipeError(ir.IRError):
    """A recipe that cannot be used; the message names the file, section and key."""


@dataclass
class Recipe:
    """A parsed, checked recipe. `pass_options` holds pipeline-text atoms per pass and option."""

    target: str | None = None
    pipeline: str | None = None
    pass_options: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    force: tuple[str, ...] = ()
    by_op_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_module: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_regex: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_node: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise RecipeError(f"{path}: not valid TOML: {err}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        _check_keys(data, _TOP_KEYS, source, "")
        recipe = cls(target=_optional_str(data, "target", source), pipeline=_optional_str(data, "pipeline", source))
        for name, options in _table(data, "passes", source).items():
            recipe.pass_options[name] = _pass_options(name, options, source)
        overrides = _table(data, "overrides", source)
        _check_keys(overrides, _OVERRIDE_KEYS, source, "[overrides]")
        recipe.exclude = _names(overrides, "exclude", source)
        recipe.force = _names(overrides, "force", source)
        for kind, target in (("op_type", recipe.by_op_type), ("module", recipe.by_module),
                             ("node_regex", recipe.by_regex), ("node", recipe.by_node)):
            for name, settings in _table(overrides, kind, source, "[overrides]").items():
                section = f"[overrides.{kind}.{name}]"
                if kind == "node_regex":
                    _check_regex(name, source, section)
                target[name] = _override(settings, source, section)
        return recipe

    def observer_config(self, model: ir.Model | None = None) -> dict[str, Any]:
        """The insert-observers config (its rule 3) these overrides make; module and regex sections need `model`."""

        def observers(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
            found = {}
            for name, settings in table.items():
                if "observer" in settings:
                    found[name] = {"method": settings["observer"],
                                   **{k: v for k, v in settings.items() if k in _OBSERVER_OPTIONS}}
            return found

        by_node = {}
        for node in model.graph.nodes if model is not None and (self.by_regex or self.by_module) else ():
            by_node.update(observers({node.name: self._settings(node, op_type=False, node_name=False)}))
        by_node.update(observers(self.by_node))
        return {"by_op_type": observers(self.by_op_type), "by_node": by_node,
                "exclude": list(self.exclude), "force": list(self.force)}

    def mark_nodes(self, model: ir.Model) -> int:
        """Set the node marks the overrides ask for (rule 2) on the nodes they name, `exclude` and
        `force` as quantize=false/true, so every pipeline sees them; returns how many nodes."""
        names = {node.name for node in model.graph.nodes}
        for key, listed in (("exclude", self.exclude), ("force", self.force)):
            missing = sorted(set(listed) - names)
            if missing:
                raise RecipeError(f"[overrides] {key} names {missing}, which the model does not have")
        marked = 0
        for node in model.graph.nodes:
            settings = self._settings(node)
            marks = {meta: settings[key] for key, meta in _NODE_MARKS.items() if key in settings}
            if node.name in self.exclude or node.name in self.force:
                marks["quantize"] = node.name in self.force
            node.meta.update(marks)
            marked += bool(marks)
        return marked

    def _settings(self, node: ir.Node, op_type: bool = True, node_name: bool = True) -> dict[str, Any]:
        """The merged override settings of `node`, by precedence (rule 2)."""
        name = node.name or ""
        settings = dict(self.by_op_type.get(_qualified(node), {})) if op_type else {}
        module = node.meta.get("module")
        if isinstance(module, str):
            for path in sorted(self.by_module, key=len):  # outer modules first: the innermost wins
                if module == path or module.startswith(path + "."):
                    settings.update(self.by_module[path])
        for pattern, values in self.by_regex.items():
            if name and re.fullmatch(pattern, name):
                settings.update(values)
        if node_name:
            settings.update(self.by_node.get(name, {}))
        return settings


def overrides_toml(model: ir.Model, comment: str = "") -> str:
    """Rule 4: the precision marks of `model` as recipe overrides, one section per unit head."""
    lines = [f"# {line}" for line in comment.splitlines()]
    seen_groups: set[str] = set()
    for node in model.graph.nodes:
        group = node.meta.get("group")
        if "precision" not in node.meta or not node.name or group in seen_groups:
            continue
        if group is not None:
            seen_groups.add(group)
        lines += ["", f"[overrides.node.{json.dumps(node.name)}]", f"precision = {json.dumps(node.meta['precision'])}"]
    return "\n".join(lines) + "\n"


def apply_pass_options(pipeline: Pipeline, options: dict[str, dict[str, list[str]]]) -> Pipeline:
    """The pipeline with named pipelines expanded and `options` filled into steps that lack them (rule 1)."""

    def expand(steps):
        result = []
        for step in steps:
            if isinstance(step, NamedPipeline):
                result.extend(expand(step.body))
            elif isinstance(step, Repeat):
                result.append(Repeat(expand(step.body), step.max_iterations, step.raw_options))
            else:
                given = {key.replace("-", "_") for key, _ in step.raw_options}
                extra = [(k, v) for k, v in options.get(step.name, {}).items() if k not in given]
                result.append(PassStep(step.name, [*step.raw_options, *extra], step.column, step.option_columns))
        return result

    steps = expand(pipeline.steps)
    text = ",".join(map(str, steps))
    return Pipeline(steps, text)


def _qualified(node: ir.Node) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain and node.domain != "ai.onnx" else node.op_type


def _check_keys(table: dict[str, Any], allowed: frozenset[str], source: str, section: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        where = f" in {section}" if section else ""
        raise RecipeError(f"{source}: unknown key {unknown[0]!r}{where} (expected one of: {', '.join(sorted(allowed))})")


def _optional_str(data: dict[str, Any], key: str, source: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RecipeError(f"{source}: {key} must be a string, not {value!r}")
    return value


def _table(data: dict[str, Any], key: str, source: str, parent: str = "") -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RecipeError(f"{source}: {parent}{'.' if parent else ''}{key} must be a table ([{key}])")
    return value


def _names(table: dict[str, Any], key: str, source: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{source}: [overrides] {key} must be a list of node names")
    return tuple(value)


def _pass_options(name: str, options: Any, source: str) -> dict[str, list[str]]:
    section = f"[passes.{name}]"
    try:
        cls = passes.get_pass(name)
    except KeyError as err:
        raise RecipeError(f"{source}: {section}: {err.args[0]}") from None
    if not isinstance(options, dict):
        raise RecipeError(f"{source}: {section} must be a table of options")
    raw = {key.replace("-", "_"): _atoms(value, source, section, key) for key, value in options.items()}
    try:
        build_options(cls, list(raw.items()))
    except passes.PipelineError as err:
        raise RecipeError(f"{source}: {section}: {err.message}") from None
    return raw


def _atoms(value: Any, source: str, section: str, key: str) -> list[str]:
    """A TOML value as pipeline-text atoms (quoted when it would not read back as one word)."""
    items = value if isinstance(value, list) else [value]
    atoms = []
    for item in items:
        if isinstance(item, bool):
            atoms.append("true" if item else "false")
        elif isinstance(item, int | float):
            atoms.append(repr(item))
        elif isinstance(item, str):
            atoms.append(item if _PLAIN_WORD.fullmatch(item) else json.dumps(item))  # the parser reads JSON strings
        else:
            raise RecipeError(f"{source}: {section} {key}: unsupported value {item!r}")
    return atoms


def _check_regex(pattern: str, source: str, section: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise RecipeError(f"{source}: {section}: not a regular expression: {err}") from None


def _override(settings: Any, source: str, section: str) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise RecipeError(f"{source}: {section} must be a table")
    _check_keys(settings, _OBSERVER_OPTIONS | {"observer", *_NODE_MARKS}, source, section)
    for key, allowed in (("activations", _ACTIVATIONS), ("precision", PRECISIONS), ("scheme", _SCHEMES)):
        value = settings.get(key)
        if value is not None and value not in allowed:
            listed = allowed if isinstance(allowed, tuple) else sorted(allowed)
            raise RecipeError(f"{source}: {section} {key}: {value!r} is not one of {', '.join(listed)}")
    observer = settings.get("observer")
    if observer is not None:
        try:
            get_observer(observer)
        except KeyError as err:
            raise RecipeError(f"{source}: {section} observer: {err.args[0]}") from None
    return dict(settings)
