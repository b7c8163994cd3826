"""Collects text pass tests: tests/passes/**/*.qir files with RUN and CHECK lines.

    // RUN: canonicalize,fuse{patterns=conv-bn}
    // CHECK: = Conv(%x, %w_folded, %b_folded)
    // CHECK-NOT: BatchNormalization

The file is parsed as IR, the RUN pipeline runs with the verifier after every pass,
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
        passes.PassManager(self.pipeline).run(model, passes.PassContext(instruments=[passes.Verifier()]))
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


class QirCheckFailure(Exception):
    """FileCheck rejected the output of a pipeline."""
