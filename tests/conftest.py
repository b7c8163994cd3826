"""Collects text pass tests: tests/passes/**/*.qir files with RUN and CHECK lines.

    // RUN: canonicalize,fuse{patterns=conv-bn}
    // CHECK: = Conv(%x, %w_folded, %b_folded)
    // CHECK-NOT: BatchNormalization

The file is parsed as IR, the RUN pipeline runs with the verifier after every pass,
and the printed result (constants inline) goes through FileCheck (the `filecheck`
package) against the file's CHECK lines. Each RUN line is one test.

A RUN line may end in `--target NAME` (`ort-cpu`, `tensorrt`): the pipeline then runs
for that target, as the command line's --target does; without it, for ort-cpu. Either
runs on a fixed CPU (`pass_context`), so expectations hold on any machine.

    // RUN: fuse,place-qdq --target tensorrt

Passes that read calibration data (calibrate, smooth-quant, assign-precision) take it
from DATA lines. Each DATA line is one batch: `name=value` feeds separated by `;`, where
name is a graph input (a leading `%` is allowed) and value a Python literal of nested
lists of numbers (or True/False) in the input's shape; the array takes the input's dtype.
The DATA lines, in file order, become the context's calibration data, shared by every RUN
line of the file; without any, there is none.

    // DATA: x=[[1.0, -2.0], [0.5, 3.0]]; mask=[[True, False], [True, True]]
    // DATA: x=[[0.0, 4.0], [-1.5, 1.0]]; mask=[[False, False], [True, False]]

RECIPE lines, joined, are a recipe in TOML: its `[overrides]` go on the context and its
pass options fill the RUN pipeline's steps, as `qc opt --recipe` does.

    // RECIPE: [overrides]
    // RECIPE: node = {conv = {activations = "int16"}}

A malformed RUN, DATA or RECIPE line is refused when the file is collected (pytest.UsageError
naming the file and line); a DATA feed that fits no graph input fails its test.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # tests use the tools' helpers
from helpers import VNNI_CPU
from torch_models import MODEL_NAMES, export_model

from qcompiler import ir, passes
from qcompiler.recipe import Recipe, RecipeError


def pass_context(target: str | None, calibration_data: list[dict[str, np.ndarray]] | None,
                 recipe: Recipe) -> passes.PassContext:
    """The context a RUN line's pipeline runs in: the verifier after every pass, the line's
    target (ort-cpu when it names none) on a fixed x86 CPU with VNNI, since expected output must
    not depend on the machine running the tests (fold-weights' reduce_range follows the CPU),
    the file's DATA batches and its recipe's overrides."""
    machine = passes.Target.named(target or "ort-cpu", flags=VNNI_CPU.flags, machine=VNNI_CPU.machine)
    return passes.PassContext(target=machine, overrides=recipe.overrides, instruments=[passes.Verifier()],
                              calibration_data=calibration_data)


@pytest.fixture(scope="session")
def torch_exports(tmp_path_factory):
    """Every model of torch_models.py exported once per test run, by name."""
    directory = tmp_path_factory.mktemp("torch")
    return {name: export_model(name, directory) for name in MODEL_NAMES}


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".qir" and "passes" in file_path.parts:
        return QirFile.from_parent(parent, path=file_path)
    return None


@dataclass(frozen=True)
class Run:
    """One RUN line: the pipeline and the target it names (None: the default)."""

    pipeline: str
    target: str | None


@dataclass(frozen=True)
class Feed:
    """One `name=value` of a DATA line, its value still the parsed literal."""

    name: str
    value: object
    line: int


_RUN_TARGET = re.compile(r"^(?P<pipeline>.*?)\s+--target\s+(?P<target>[\w.-]+)$")
_FEED_NAME = re.compile(r"^%?(?P<name>[^\s=%;]+)$")


def _parse_run(text: str, where: str) -> Run:
    match = _RUN_TARGET.match(text)
    pipeline, target = (match["pipeline"].strip(), match["target"]) if match else (text, None)
    if not pipeline or "--" in pipeline:
        raise pytest.UsageError(f"{where}: a RUN line is '// RUN: <pipeline>' with an optional "
                                f"'--target NAME' at the end, not {text!r}")
    return Run(pipeline, target)


def _parse_data(text: str, where: str, line: int) -> list[Feed]:
    feeds: list[Feed] = []
    for item in text.split(";"):
        name, equals, literal = item.partition("=")
        match = _FEED_NAME.match(name.strip())
        if not equals or match is None:
            raise pytest.UsageError(f"{where}: a DATA line holds 'name=value' feeds separated by ';', "
                                    f"not {item.strip()!r}")
        try:
            value = ast.literal_eval(literal.strip())
        except (ValueError, SyntaxError):
            raise pytest.UsageError(f"{where}: the value of {match['name']!r} is no Python literal: "
                                    f"{literal.strip()!r}") from None
        if not _numeric_nest(value):
            raise pytest.UsageError(f"{where}: the value of {match['name']!r} must be a number or nested "
                                    f"lists of numbers, not {literal.strip()!r}")
        if any(feed.name == match["name"] for feed in feeds):
            raise pytest.UsageError(f"{where}: {match['name']!r} is fed twice")
        feeds.append(Feed(match["name"], value, line))
    return feeds


def _parse_recipe(lines: list[str], where: str) -> Recipe:
    try:
        return Recipe.from_dict(tomllib.loads("\n".join(lines)), f"{where} RECIPE")
    except (tomllib.TOMLDecodeError, RecipeError) as err:
        raise pytest.UsageError(f"{where}: the RECIPE lines are no recipe: {err}") from None


def _numeric_nest(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_numeric_nest(v) for v in value)
    return isinstance(value, (bool, int, float))


class QirFile(pytest.File):
    def collect(self):
        runs: list[Run] = []
        batches: list[list[Feed]] = []
        recipe_lines: list[str] = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            where = f"{self.path}:{number}"
            if line.startswith("// RUN:"):
                runs.append(_parse_run(line.split("RUN:", 1)[1].strip(), where))
            elif line.startswith("// DATA:"):
                batches.append(_parse_data(line.split("DATA:", 1)[1], where, number))
            elif line.startswith("// RECIPE:"):
                recipe_lines.append(line.split("RECIPE:", 1)[1].strip())
            elif re.match(r"//\s*(RUN|DATA|RECIPE)\b", line):
                raise pytest.UsageError(f"{where}: write '// RUN: ', '// DATA: ' or '// RECIPE: ' exactly, "
                                        f"not {line!r}")
        if not runs:
            raise pytest.UsageError(f"{self.path}: a pass test needs a '// RUN: <pipeline>' line")
        recipe = _parse_recipe(recipe_lines, str(self.path))
        for index, run in enumerate(runs):
            yield QirItem.from_parent(self, name=f"run{index}", run=run, batches=batches, recipe=recipe)


class QirItem(pytest.Item):
    def __init__(self, *, run: Run, batches: list[list[Feed]], recipe: Recipe, **kwargs):
        super().__init__(**kwargs)
        self.run, self.batches, self.recipe = run, batches, recipe

    def runtest(self):
        model = ir.parse_file(self.path)
        data = [self._batch(model, feeds) for feeds in self.batches] or None
        pipeline = self.recipe.steps(self.run.pipeline)  # the recipe's pass options fill the steps, as qc opt does
        passes.PassManager(pipeline).run(model, pass_context(self.run.target, data, self.recipe))
        output = ir.print_model(model, weights="inline")
        check = subprocess.run(
            [sys.executable, "-m", "filecheck", str(self.path)], input=output, capture_output=True, text=True
        )
        if check.returncode != 0:
            raise QirCheckFailure(self.describe(), check.stdout + check.stderr, output)

    def _batch(self, model: ir.Model, feeds: list[Feed]) -> dict[str, np.ndarray]:
        """A DATA line's feeds as arrays of the graph inputs' dtypes, checked against their shapes."""
        inputs = {value.name: value for value in model.graph.inputs}
        batch = {}
        for feed in feeds:
            where = f"{self.path}:{feed.line}"
            value = inputs.get(feed.name)
            if value is None:
                raise QirDataError(f"{where}: {feed.name!r} is no graph input (inputs: {', '.join(inputs)})")
            if value.dtype is None:
                raise QirDataError(f"{where}: the input {feed.name!r} is no tensor with a dtype to feed")
            array = np.asarray(feed.value, dtype=value.dtype.numpy)
            shape = value.shape
            if shape is not None and (len(shape) != array.ndim
                                      or any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape))):
                dims = ",".join("?" if d is None else str(d) for d in shape)
                raise QirDataError(f"{where}: {feed.name!r} has shape {list(array.shape)}, which the input "
                                   f"%{feed.name}: {value.dtype.short_name}[{dims}] does not take")
            batch[feed.name] = array
        return batch

    def describe(self) -> str:
        return self.run.pipeline + (f" --target {self.run.target}" if self.run.target else "")

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, QirCheckFailure):
            pipeline, report, output = excinfo.value.args
            return f"pipeline: {pipeline}\n{report}\n--- output ---\n{output}"
        if isinstance(excinfo.value, QirDataError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, 0, f"{self.path.name}::{self.name} ({self.describe()})"


class QirCheckFailure(Exception):
    """FileCheck rejected the output of a pipeline."""


class QirDataError(Exception):
    """A DATA feed that fits no graph input of the parsed file."""
