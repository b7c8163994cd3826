"""Collects text pass tests: tests/passes/**/*.qir files with RUN and CHECK lines.

    // RUN: canonicalize,fuse{patterns=conv-bn}
    // CHECK: = Conv(%x, %w_folded, %b_folded)
    // CHECK-NOT: BatchNormalization

The file is parsed as IR, the RUN pipeline runs with the verifier after every pass
(for the target a trailing `--target NAME` names, ort-cpu by default, on a fixed CPU:
`text_test_target`),
and the printed result (constants inline) goes through FileCheck (the `filecheck`
package) against the file's CHECK lines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # tests use the tools' helpers
from torch_models import MODEL_NAMES, export_model

from qcompiler import ir, passes


@pytest.fixture(scope="session")
def torch_exports(tmp_path_factory):
    """Every model of torch_models.py exported once per test run, by name."""
    directory = tmp_path_factory.mktemp("torch")
    return {name: export_model(name, directory) for name in MODEL_NAMES}


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".qir" and "passes" in file_path.parts:
        return QirFile.from_parent(parent, path=file_path)
    return None


class QirFile(pytest.File):
    def collect(self):
        runs = [line.split("RUN:", 1)[1].strip() for line in self.path.read_text().splitlines() if line.startswith("// RUN:")]
        if not runs:
            raise pytest.UsageError(f"{self.path}: a pass test needs a '// RUN: <pipeline>' line")
        for index, pipeline in enumerate(runs):
            yield QirItem.from_parent(self, name=f"run{index}", pipeline=pipeline)


class QirItem(pytest.Item):
    def __init__(self, *, pipeline: str, **kwargs):
        super().__init__(**kwargs)
        self.pipeline = pipeline

    def runtest(self):
        model = ir.parse_file(self.path)
        pipeline, _, target = self.pipeline.partition(" --target ")
        context = passes.PassContext(target=text_test_target(target.strip() or "ort-cpu"),
                                     instruments=[passes.Verifier()])
        passes.PassManager(pipeline.strip()).run(model, context)
        output = ir.print_model(model, weights="inline")
        check = subprocess.run(
            [sys.executable, "-m", "filecheck", str(self.path)], input=output, capture_output=True, text=True
        )
        if check.returncode != 0:
            raise QirCheckFailure(self.pipeline, check.stdout + check.stderr, output)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, QirCheckFailure):
            pipeline, report, output = excinfo.value.args
            return f"pipeline: {pipeline}\n{report}\n--- output ---\n{output}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, 0, f"{self.path.name}::{self.name} ({self.pipeline})"


def text_test_target(name: str) -> passes.Target:
    """The target a RUN line names, on a fixed x86 CPU with VNNI: expected output must not depend on
    the machine running the tests (fold-weights' reduce_range follows the CPU)."""
    return passes.Target.named(name, flags=frozenset({"avx2", "avx512_vnni"}), machine="x86_64")


class QirCheckFailure(Exception):
    """FileCheck rejected the output of a pipeline."""
