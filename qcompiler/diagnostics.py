"""Checks on the data a compile is given and on what the quantized model computes, as report warnings.

1. Too few calibration rows: each range is the extreme of N rows, and a new row passes
   the extreme of N others with probability about 1 / (N + 1) (for exchangeable rows), so
   below MIN_CALIBRATION_ROWS (64: about 1.5% per value) the ranges fit the sample
   rather than the data.
2. Repeated rows: every row (all inputs' row together) is hashed; rows equal to an
   earlier one add no information and weigh their values twice. Checks 1 and 2 read the
   calibration data once more, without running the model.
3. Distribution shift, only with held-out evaluation data: right after calibrate, the
   float model runs once over the first SHIFT_ROWS rows of the evaluation data (whole
   batches) with the observed values tapped (minmax observers through observers.observe):
   a shift that matters shows in a few dozen rows, and a tapped run costs about two plain
   ones, so the whole set would double validation's time. A value whose evaluation range
   passes its calibration range (`observed_range`) by more than SHIFT_LIMIT times that
   range's width on either side is listed, worst first: its evaluation values clip.
   When one batch of those activations passes calibrate's memory budget (which would
   take more than one pass) the check is skipped with a warning.
4. Non-finite outputs: NaN or Inf in the quantized model's outputs on the validation
   data (validate.compare_models counts them).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

import numpy as np

from qcompiler import ir, passes
from qcompiler.ir.evaluate import OutputMetrics, main_values, tap_groups
from qcompiler.passes.analyses.observers import Observations, observe
from qcompiler.passes.infra.progress import Progress
from qcompiler.passes.transforms.calibrate import Calibrate

MIN_CALIBRATION_ROWS = 64
SHIFT_ROWS = 64
SHIFT_LIMIT = 1.0
_LISTED = 5


def sample_warnings(data: Iterable[dict[str, np.ndarray]]) -> list[str]:
    """Rules 1 and 2 over every feed of the calibration data."""
    rows = Counter(_row_hashes(data))
    total = sum(rows.values())
    found = []
    if total < MIN_CALIBRATION_ROWS:
        found.append(f"only {total} calibration row(s): ranges measured on fewer than {MIN_CALIBRATION_ROWS} rows "
                     f"fit the sample (a new row passes the extreme of {total} with probability about "
                     f"1/{total + 1}); calibrate on a few hundred representative rows")
    repeats = total - len(rows)
    if repeats:
        repeated = sum(1 for count in rows.values() if count > 1)
        found.append(f"{repeats} of {total} calibration rows repeat an earlier row ({repeated} distinct row(s) "
                     "occur more than once): repeated rows add no range information; deduplicate the data")
    return found


class DataChecks(passes.Instrument):
    """Rules 1-3 around the calibrate pass, so only pipelines that calibrate get them; `warnings` holds
    what they found."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def before_pass(self, model: ir.Model, event, ctx: passes.PassContext) -> None:
        if event.pass_.name == "calibrate" and ctx.calibration_data is not None:
            self.warnings.extend(sample_warnings(ctx.calibration_data))

    def after_pass(self, model: ir.Model, event, ctx: passes.PassContext, changed: bool) -> None:
        if event.pass_.name == "calibrate" and ctx.evaluation_data is not None:
            self.warnings.extend(shift_warnings(model, ctx.evaluation_data, ctx.observations))


def shift_warnings(model: ir.Model, data: Iterable[dict[str, np.ndarray]],
                   observations: Observations | None = None) -> list[str]:
    """Rule 3 on a calibrated float model: the values whose range on `data` passes their calibrated range
    (measured once per model and data when `observations` keeps them)."""
    values = [v for v in main_values(model) if "observer" in v.meta and v.observed_range is not None]
    if not values:
        return []
    if len(tap_groups(model, values, data, Calibrate.Options().memory_budget_mb << 20)) > 1:
        return [("distribution shift not checked: the activations of one evaluation batch pass calibrate's "
                 "memory budget; evaluate on smaller batches to have it checked")]
    try:
        observers, _ = observe(model, values, [("minmax", ())] * len(values), data, Progress("", None, enabled=False),
                               rows=SHIFT_ROWS, store=observations)
    except passes.PassError as err:
        return [f"distribution shift not checked: {err}"]
    shifted = []
    for value, observer in zip(values, observers):
        lo, hi = value.observed_range
        found_lo, found_hi = observer.range()
        eval_lo, eval_hi = float(np.min(found_lo)), float(np.max(found_hi))
        excess = max(eval_hi - hi, lo - eval_lo, 0.0) / max(hi - lo, np.finfo(np.float32).tiny)
        if excess > SHIFT_LIMIT:
            shifted.append((excess, value, (eval_lo, eval_hi)))
    if not shifted:
        return []
    shifted.sort(key=lambda found: -found[0])
    listed = ", ".join(f"%{v.name} [{lo:.4g}, {hi:.4g}] vs calibrated [{v.observed_range[0]:.4g}, "
                       f"{v.observed_range[1]:.4g}] ({excess:.1f}x its width beyond)"
                       for excess, v, (lo, hi) in shifted[:_LISTED])
    more = f" and {len(shifted) - _LISTED} more" if len(shifted) > _LISTED else ""
    return [(f"distribution shift: {len(shifted)} of {len(values)} activations range far beyond their "
             f"calibration range on the evaluation data, so their values clip: {listed}{more}; calibrate on data "
             "like the evaluation data")]


def nonfinite_warnings(outputs: Iterable[OutputMetrics]) -> list[str]:
    """Rule 4: one line per output holding NaN or Inf."""
    return [f"output {m.name}: {m.nonfinite} NaN/Inf values in the quantized model" for m in outputs if m.nonfinite]


def _row_hashes(data: Iterable[dict[str, np.ndarray]]) -> Iterable[bytes]:
    """A digest of each row (axis 0) of every feed, over all inputs in name order."""
    for feeds in data:
        arrays = [np.ascontiguousarray(feeds[name]) for name in sorted(feeds)]
        for row in range(len(arrays[0]) if arrays else 0):
            digest = hashlib.blake2b(digest_size=16)
            for array in arrays:
                digest.update(array[row].tobytes())
            yield digest.digest()
