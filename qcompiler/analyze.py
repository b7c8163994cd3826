"""sensitivity(): how much quantizing each unit of a model costs its outputs, as `qc sensitivity` prints it.

1. The model, recipe, target and data go through the same preparation as compile()
   (compiler.prepare), so the units measured are the ones compile would quantize.
2. The effective pipeline splits at its first place-qdq: the passes before it (without
   assign-precision, which would decide on its own) calibrate the model; place-qdq and
   what follows emit every variant (passes/analyses/sensitivity.py).
3. `jobs` > 1 splits the variants into that many shares, run where `executor` says
   (as compile's: local processes by default, or Ray tasks).
4. Evaluation data is the held-out data, else the calibration data (flagged in the
   notes); `samples` bounds the rows used.
5. With `cache`, the table is stored in that JSON file keyed by a hash of the
   calibrated model, the emission pipeline, the feeds and the target; a later run
   with the same key reads it instead of measuring.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from qcompiler import ir, passes
from qcompiler.compiler import as_executor, prepare
from qcompiler.ir.evaluate import first_rows, rows_of
from qcompiler.ir.fileio import atomic_output
from qcompiler.passes.infra.pipeline import PassStep
from qcompiler.passes.infra.progress import Progress
from qcompiler.passes.analyses.sensitivity import Evaluator, SensitivityTable, UnitSensitivity, figure_from_dict
from qcompiler.passes.analyses.sensitivity import sensitivity as measure
from qcompiler.passes.analyses.sensitivity import units as find_units
from qcompiler.recipe import Recipe

_CACHE_VERSION = 1


def sensitivity(model: Any, calib: Any, *, eval: Any = None, recipe: Recipe | str | Path | dict | None = None,
                pipeline: str | None = None, target: str | passes.Target | None = None, samples: int = 256, jobs: int = 1,
                cache: str | Path | None = None, progress: bool | None = None,
                executor: str | passes.Executor | None = None) -> SensitivityTable:
    """The sensitivity table of `model` (passes/analyses/sensitivity.py rule 5), most sensitive unit first in `.ranked()`."""
    start = time.perf_counter()
    job = prepare(model, calib, recipe=recipe, pipeline=pipeline, target=target, eval=eval)
    calibrating, emitting = split_pipeline(job.steps)
    passes.PassManager(",".join(map(str, calibrating))).run(job.model, job.context([passes.Verifier()]))
    evaluator = Evaluator(job.model, ",".join(map(str, emitting)), first_rows(job.evaluation, samples),
                          target=job.target)
    found = find_units(job.model)
    key = _cache_key(evaluator, found) if cache is not None else None
    table = _load(Path(cache), key, found) if key else None
    if table is None:
        table = measure(evaluator, found, jobs=jobs, executor=as_executor(executor),
                        progress=Progress("sensitivity", 1 + 2 * len(found), "variants", enabled=progress))
        if key:
            _save(Path(cache), key, table)
    if job.held_out is None:
        table.notes.append("measured on the calibration data: pass evaluation data for figures that are not flattered")
    table.notes.append(f"{len(found)} units, {table.runs} variants, {sum(map(rows_of, evaluator.feeds))} rows; "
                       f"{time.perf_counter() - start:.1f} s in all")
    return table


def split_pipeline(steps) -> tuple[list, list]:
    """Rule 2: (calibrating steps, emitting steps) of a flat pipeline."""
    flat = list(steps.steps)
    at = next((i for i, s in enumerate(flat) if isinstance(s, PassStep) and s.name == "place-qdq"), None)
    if at is None:
        raise passes.PassError(f"pipeline {steps} has no place-qdq: nothing would be quantized to measure")
    return [s for s in flat[:at] if not (isinstance(s, PassStep) and s.name == "assign-precision")], flat[at:]


def _cache_key(evaluator: Evaluator, found) -> str:
    target = evaluator.target
    digest = hashlib.sha256(f"v{_CACHE_VERSION}|{evaluator.emit}|{target.name}|{target.reduce_range[0]}|".encode())
    digest.update(ir.print_model(evaluator.model, weights="summary").encode())
    for feed in evaluator.feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(feed[name].tobytes())
    digest.update(repr([(u.name, u.positions) for u in found]).encode())
    return digest.hexdigest()


def _load(path: Path, key: str, found) -> SensitivityTable | None:
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("key") != key:
        return None
    by_name = {unit.name: unit for unit in found}
    rows = [UnitSensitivity(by_name[r["unit"]], figure_from_dict(r["alone"]), figure_from_dict(r["without"]),
                            float(r["gain_db"])) for r in stored["rows"]]
    return SensitivityTable(figure_from_dict(stored["all_int8"]), stored["reference_metric"], rows, 0, 0.0,
                            notes=["read from the cache: no variant was run"])


def _save(path: Path, key: str, table: SensitivityTable) -> None:
    with atomic_output(path) as staged:
        staged.write_text(json.dumps({"key": key, **table.to_dict()}, indent=1))


def plot_table(table: SensitivityTable, path: Path, title: str = "") -> None:
    """A bar chart of the table: per unit, the SQNR with only it in int8 and with all int8 but it (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    ranked = table.ranked()
    names = [r.unit.name for r in ranked]
    height = 0.4
    figure, axes = pyplot.subplots(figsize=(9, 1.5 + 0.35 * len(ranked)))
    positions = range(len(ranked))
    axes.barh([p - height / 2 for p in positions], [_finite(r.alone.min_sqnr_db) for r in ranked], height,
              label="only it int8")
    axes.barh([p + height / 2 for p in positions], [_finite(r.without.min_sqnr_db) for r in ranked], height,
              label="all int8 but it")
    axes.axvline(table.all_int8.min_sqnr_db, color="black", linestyle="--", label="all int8")
    axes.set_yticks(list(positions), names, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("output SQNR (dB)")
    axes.set_title(f"sensitivity {title}".strip())
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)


def _finite(value: float, cap: float = 100.0) -> float:
    """Bars need finite lengths: an exact output (inf dB) draws at `cap`, NaN at 0."""
    return max(min(value, cap), -cap) if value == value else 0.0
