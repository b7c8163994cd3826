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
2. `[overrides]` becomes a `passes.Overrides` (passes/infra/overrides.py says what each
   setting does and the precedence), which the compile's context carries: apply-overrides
   writes the node marks, insert-observers reads the observers.
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
from qcompiler.passes.infra.overrides import Overrides
from qcompiler.passes.infra.pipeline import NamedPipeline, PassStep, Pipeline, Repeat, build_options

DEFAULT_PIPELINE = "int8"
_TOP_KEYS = frozenset({"target", "pipeline", "passes", "overrides"})
_OVERRIDE_KEYS = frozenset({"exclude", "force", "op_type", "module", "node_regex", "node"})
_SECTIONS = {"op_type": "by_op_type", "module": "by_module", "node_regex": "by_regex", "node": "by_node"}
_PLAIN_WORD = re.compile(r"[^,{}()=\s\"]+")


class RecipeError(ir.IRError):
    """A recipe that cannot be used; the message names the file, section and key."""


@dataclass
class Recipe:
    """A parsed, checked recipe. `pass_options` holds pipeline-text atoms per pass and option."""

    target: str | None = None
    pipeline: str | None = None
    pass_options: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    overrides: Overrides = field(default_factory=Overrides)

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
        sections = {field_name: _table(overrides, kind, source, "[overrides]") for kind, field_name in _SECTIONS.items()}
        try:
            recipe.overrides = Overrides(exclude=_names(overrides, "exclude", source),
                                         force=_names(overrides, "force", source), **sections)
        except ValueError as err:
            raise RecipeError(f"{source}: {err}") from None
        return recipe

    def steps(self, pipeline: str | None = None) -> Pipeline:
        """`pipeline` (else the recipe's, else int8) with named pipelines expanded and the recipe's
        pass options filled in (rule 1): what compile and `qc opt --recipe` both run."""
        return apply_pass_options(passes.parse_pipeline(pipeline or self.pipeline or DEFAULT_PIPELINE),
                                  self.pass_options)


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
