"""Experiment tracking: an auto() walk logged to MLflow, one run per rung under a run for the walk.

1. The store is an MLflow tracking URI; by default `sqlite:///mlflow.db` in the current
   folder: MLflow 3 refuses a plain folder store (./mlruns) unless told to allow it, and
   recommends a database. A sqlite store keeps its artifacts in `mlruns/` beside the
   database file (not in whatever folder a later run starts in).
2. The runs go in the experiment `experiment` (default "qcompiler-auto"), made on first
   use. The walk is a parent run named after the model: parameters model, tolerance and
   time budget; metrics seconds and candidates (attempts); tag `qc.chosen` (a rung, or
   "float"); artifact `auto_report.json` (AutoResult.to_dict).
3. Each attempt, in the order tried, is a run nested under it (tag mlflow.parentRunId):
   parameters rung, pipeline, tolerance; metrics `accuracy/OUTPUT` (the task measure's
   value, named by the parameter `measure/OUTPUT`) and `sqnr_db/OUTPUT` per output,
   `metric` (the --metric function's value, when one judges), latency_ratio,
   size_ratio, size_bytes, compile_seconds, for the attempts that compiled, and
   seconds for all; tags `qc.status` (accepted: the one kept; rejected, skipped, failed)
   and `qc.reason` (the verdict); artifact `compile_report.json`, and the chosen run
   also its model, `model.onnx`.
4. Runs are logged after the walk, from the AutoResult: what MLflow holds is what the
   summary printed. mlflow is imported only here, when asked; without it, or with a
   store it cannot open, the error is one line.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qcompiler import ir
from qcompiler.auto import Attempt, AutoResult

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "qcompiler-auto"
MLFLOW_MISSING = "--mlflow needs the mlflow extra: pip install qcompiler[mlflow]"
_PARENT = "mlflow.parentRunId"
_KEY_UNSAFE = re.compile(r"[^\w\-. /]")  # what MLflow allows in a metric or parameter name


class AutoTracker:
    """An MLflow store opened for logging auto() walks (rules 1-2); opened before the walk, so a
    missing mlflow or a bad URI fails before any rung runs."""

    def __init__(self, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> None:
        self.uri = uri or DEFAULT_URI
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ir.IRError(MLFLOW_MISSING) from None
        self._errors = MlflowException
        with self._reported(), _quiet_store_setup():
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (found.experiment_id if found is not None else
                                  self.client.create_experiment(experiment, artifact_location=_artifacts_beside(self.uri)))

    def log(self, result: AutoResult, model_name: str) -> str:
        """Rules 2-3: the parent run's id."""
        with self._reported(), tempfile.TemporaryDirectory() as scratch:
            parent = self._run(f"auto {model_name}", {}, {"model": model_name, "tolerance": result.tolerance,
                                                         "time_budget_s": result.time_budget_s},
                               {"seconds": result.seconds, "candidates": len(result.attempts)},
                               {"qc.chosen": result.chosen.rung if result.chosen is not None else "float"})
            self.client.log_dict(parent, result.to_dict(), "auto_report.json")
            for attempt in result.attempts:
                self._log_attempt(attempt, result, parent, Path(scratch))
            self.client.set_terminated(parent)
            return parent

    def _log_attempt(self, attempt: Attempt, result: AutoResult, parent: str, scratch: Path) -> None:
        params: dict[str, Any] = {"rung": attempt.rung, "pipeline": attempt.pipeline, "tolerance": result.tolerance}
        metrics: dict[str, float] = {}
        compiled = attempt.result
        if compiled is not None:
            report = compiled.report
            for output in report.outputs:
                if output.measure_value is not None:
                    params[f"measure/{_key(output.name)}"] = output.measure
                    metrics[f"accuracy/{_key(output.name)}"] = output.measure_value
                metrics[f"sqnr_db/{_key(output.name)}"] = output.sqnr_db
            metrics.update({"size_ratio": attempt.size_ratio, "size_bytes": report.size_bytes["quantized"],
                            "compile_seconds": attempt.compile_seconds})
            if attempt.latency_ratio is not None:
                metrics["latency_ratio"] = attempt.latency_ratio
            if attempt.metric is not None:
                metrics["metric"] = attempt.metric
        metrics["seconds"] = attempt.seconds
        run = self._run(attempt.rung, {_PARENT: parent}, params, metrics,
                        {"qc.status": status(attempt, result), "qc.reason": attempt.verdict})
        if compiled is not None:
            self.client.log_dict(run, compiled.report.to_dict(), "compile_report.json")
        if attempt is result.chosen:
            path = scratch / "model.onnx"
            compiled.save(path)
            self.client.log_artifact(run, str(path))
        self.client.set_terminated(run)

    def _run(self, name: str, tags: dict[str, str], params: dict[str, Any], metrics: dict[str, float],
             more_tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, **more_tags})
        run_id = run.info.run_id
        for key, value in params.items():
            self.client.log_param(run_id, key, value)
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value))
        return run_id

    def _reported(self) -> contextlib.AbstractContextManager[None]:
        """MLflow's errors as one line naming the store."""
        return _one_line(self._errors, self.uri)


def status(attempt: Attempt, result: AutoResult) -> str:
    """Rule 3's qc.status: accepted (kept), skipped, failed, else rejected (out of tolerance, or beaten)."""
    if attempt is result.chosen:
        return "accepted"
    for word in ("skipped", "failed"):
        if attempt.verdict.startswith(word):
            return word
    return "rejected"


@contextlib.contextmanager
def _quiet_store_setup() -> Iterator[None]:
    """A new sqlite store logs each table it creates: the compile's output stays its own."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _one_line(errors: type[Exception], uri: str) -> Iterator[None]:
    try:
        yield
    except errors as error:
        first = str(getattr(error, "message", error)).strip().splitlines()
        raise ir.IRError(f"--mlflow {uri}: {first[0] if first else type(error).__name__}") from None


def _artifacts_beside(uri: str) -> str | None:
    """Rule 1: `mlruns/` beside a sqlite database file; MLflow's own default for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlruns").as_uri()


def _key(name: str) -> str:
    return _KEY_UNSAFE.sub("_", name)
