"""Data diagnostics: each fires on crafted data with figures numpy agrees with, and stays quiet on the golden data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from qcompiler import compile, ir, passes
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.diagnostics import MIN_CALIBRATION_ROWS, nonfinite_warnings, sample_warnings, shift_warnings
from qcompiler.ir.evaluate import main_values
from qcompiler.validate import compare_models

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.parent.name for p in GOLDEN.glob("*/calib.npz"))
MLP = GOLDEN / "mlp"


def mlp_rows(name: str) -> np.ndarray:
    with np.load(MLP / name) as data:
        return data["x"]


def calibrated(folder: Path, calib) -> ir.Model:
    """The golden model after calibrate: float, with observed ranges on its values."""
    model = ir.load_model(folder / "model.onnx")
    data = open_calibration_data(calib, input_specs(model))
    passes.PassManager("canonicalize,fuse,insert-observers,calibrate").run(model,
                                                                           passes.PassContext(calibration_data=data))
    return model


def test_few_rows_are_reported_with_their_count():
    (warning,) = sample_warnings([{"x": mlp_rows("calib.npz")[:6]}, {"x": mlp_rows("calib.npz")[6:10]}])
    assert warning.startswith(f"only 10 calibration row(s): ranges measured on fewer than {MIN_CALIBRATION_ROWS} "
                              "rows fit the sample (a new row passes the extreme of 10 with probability about 1/11)")


def test_repeated_rows_are_counted_across_feeds():
    rows = mlp_rows("calib.npz")
    repeated = np.concatenate([rows, rows[:20], rows[:5]])  # 89 rows: 25 repeats of 20 distinct rows
    feeds = [{"x": repeated[i:i + 7]} for i in range(0, len(repeated), 7)]
    distinct, counts = np.unique(repeated, axis=0, return_counts=True)
    (warning,) = sample_warnings(feeds)
    assert warning.startswith(f"{len(repeated) - len(distinct)} of {len(repeated)} calibration rows repeat an "
                              f"earlier row ({np.count_nonzero(counts > 1)} distinct row(s) occur more than once)")


def test_a_row_repeats_only_when_every_input_repeats():
    a = np.zeros((MIN_CALIBRATION_ROWS, 3), np.float32)  # the same in every row
    b = np.arange(MIN_CALIBRATION_ROWS, dtype=np.int64)[:, None]
    assert sample_warnings([{"a": a, "b": b}]) == []
    assert len(sample_warnings([{"a": a, "b": np.zeros_like(b)}])) == 1


def test_shifted_evaluation_data_lists_the_worst_values():
    model = calibrated(MLP, MLP / "calib.npz")
    calib, evaluation = mlp_rows("calib.npz"), mlp_rows("inputs.npz") * 10
    (warning,) = shift_warnings(model, open_calibration_data({"x": evaluation}, input_specs(model)))
    total = len([v for v in main_values(model) if "observer" in v.meta])
    assert warning.startswith("distribution shift: ") and f" of {total} activations range far beyond" in warning
    lo, hi = float(calib.min()), float(calib.max())
    eval_lo, eval_hi = float(evaluation.min()), float(evaluation.max())
    excess = max(eval_hi - hi, lo - eval_lo) / (hi - lo)
    assert excess > 2  # numpy's view of the input alone: far outside
    assert (f"%x [{eval_lo:.4g}, {eval_hi:.4g}] vs calibrated [{lo:.4g}, {hi:.4g}] "
            f"({excess:.1f}x its width beyond)") in warning


@pytest.mark.parametrize("case", CASES)
def test_golden_data_raises_no_diagnostic(case):
    folder = GOLDEN / case
    model = calibrated(folder, folder / "calib.npz")
    specs = input_specs(model)
    assert sample_warnings(open_calibration_data(folder / "calib.npz", specs)) == []
    assert shift_warnings(model, open_calibration_data(folder / "inputs.npz", specs)) == []


class Counting:
    """Evaluation data that counts the complete passes over it (a first-batch peek is not one)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows, self.passes = rows, 0

    def __call__(self):
        yield from ({"x": self.rows[i:i + 8]} for i in range(0, len(self.rows), 8))
        self.passes += 1


def test_compile_reports_the_diagnostics_and_reads_the_evaluation_data_once_more():
    evaluation = Counting(mlp_rows("inputs.npz") * 10)
    calib = mlp_rows("calib.npz")[:10]
    warnings = compile(MLP / "model.onnx", {"x": np.concatenate([calib, calib])}, eval=evaluation).report.warnings
    assert [w.split(":")[0] for w in warnings if w.startswith(("only", "10 of", "distribution"))] == [
        "only 20 calibration row(s)",
        "10 of 20 calibration rows repeat an earlier row (10 distinct row(s) occur more than once)",
        "distribution shift"]
    assert evaluation.passes == 2  # the shift check and validation


def test_compile_on_golden_data_warns_of_nothing_in_the_data():
    warnings = compile(MLP / "model.onnx", MLP / "calib.npz", eval=MLP / "inputs.npz").report.warnings
    assert not [w for w in warnings if w.startswith(("only", "distribution")) or "repeat an earlier" in w]


def test_no_shift_check_without_held_out_data():
    calib = mlp_rows("calib.npz")
    warnings = compile(MLP / "model.onnx", {"x": np.concatenate([calib, calib * 10])}).report.warnings
    assert not [w for w in warnings if w.startswith("distribution")]


def test_nonfinite_outputs_are_warned_about():
    def add(noise: np.ndarray) -> bytes:
        graph = helper.make_graph([helper.make_node("Add", ["x", "n"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                                  [helper.make_tensor("n", TensorProto.FLOAT, [4], noise)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    x = np.ones((5, 4), np.float32)
    noise = np.array([0, np.nan, np.inf, 0], np.float32)
    metrics = compare_models(add(np.zeros(4, np.float32)), add(noise), [{"x": x}])
    expected = int(np.count_nonzero(~np.isfinite(x + noise)))
    assert nonfinite_warnings(metrics) == [f"output y: {expected} NaN/Inf values in the quantized model"]
    assert nonfinite_warnings(compare_models(add(np.zeros(4, np.float32)), add(np.ones(4, np.float32)),
                                             [{"x": x}])) == []
