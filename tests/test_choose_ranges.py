"""choose-ranges, checked against ONNX Runtime runs of the compiled models and against calibrate run with each method alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import VNNI_CPU, run_onnx

import qcompiler
from qcompiler import ir, passes
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.ir.evaluate import main_values
from qcompiler.passes.transforms.choose_ranges import ChooseRanges

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
OUTLIER = GOLDEN / "outlier_convnet"
METHODS = {"minmax": "method=minmax", "percentile-99.9": "method=percentile,percentile=99.9",
           "mse": "method=mse", "entropy": "method=entropy"}


def compiled(folder: Path, pipeline: str) -> qcompiler.CompileResult:
    return qcompiler.compile(str(folder / "model.onnx"), str(folder / "calib.npz"), eval=str(folder / "inputs.npz"),
                             pipeline=pipeline, target=VNNI_CPU)  # the measured figures are full-range codes


def ort_sqnr(folder: Path, result: qcompiler.CompileResult, rows: str = "inputs.npz") -> float:
    """Output SQNR in dB of the compiled model in ONNX Runtime against the float model's (numpy), on the
    held-out rows (`inputs.npz`) or the calibration rows the ranges were chosen on (`calib.npz`)."""
    with np.load(folder / rows) as data:
        feeds = dict(data)
    want = run_onnx(ir.load_model(folder / "model.onnx"), feeds)[0].astype(np.float64)
    got = run_onnx(ir.to_onnx(result.model), feeds)[0]
    return float(10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)))


def calibrated(observer: str) -> tuple[ir.Model, object]:
    model = ir.load_model(OUTLIER / "model.onnx")
    data = open_calibration_data(OUTLIER / "calib.npz", input_specs(model))
    passes.PassManager(f"canonicalize,fuse,insert-observers{{{observer}}},calibrate").run(
        model, passes.PassContext(calibration_data=data))
    return model, data


def observed(model: ir.Model) -> dict[str, tuple[float, float]]:
    return {v.name: v.observed_range for v in main_values(model) if "observer" in v.meta}


def test_heavy_tailed_activations_get_a_clipped_range_that_onnx_runtime_confirms():
    minmax, chosen = compiled(OUTLIER, "int8"), compiled(OUTLIER, "int8-ranges")
    assert ort_sqnr(OUTLIER, chosen) > ort_sqnr(OUTLIER, minmax) + 6.0  # held out; measured: -0.05 -> 10.3 dB
    changed = chosen.report.ranges["changed"]
    assert changed and all(c["method"] != "minmax" for c in changed)
    # the figure the pass reports is the compiled model's on the calibration rows (all 64 of them), within
    # what CPU kernels may differ by
    assert chosen.report.ranges["end_sqnr_db"] == pytest.approx(ort_sqnr(OUTLIER, chosen, "calib.npz"), abs=0.05)


@pytest.mark.parametrize("case", ["resnet_like", "mobilenet_like"])
def test_the_chosen_ranges_never_lose_to_minmax_on_the_rows_they_were_chosen_on(case):
    folder = GOLDEN / case
    minmax, chosen = compiled(folder, "int8"), compiled(folder, "int8-ranges")
    assert ort_sqnr(folder, chosen, "calib.npz") >= ort_sqnr(folder, minmax, "calib.npz") - 0.05


def test_the_report_lists_each_change_as_a_step_up_that_the_model_keeps():
    model, data = calibrated("method=minmax")
    before = observed(model)
    ctx = passes.PassContext(calibration_data=data, following="place-qdq,fold-weights,cleanup")
    assert ChooseRanges(ChooseRanges.Options()).run(model, ctx)
    report, after = ctx.report["choose-ranges"], observed(model)
    previous = report["start_sqnr_db"]
    for change in report["changed"]:
        assert change["sqnr_before_db"] == previous and change["sqnr_after_db"] > previous
        assert after[change["value"]] == pytest.approx(tuple(change["range"]))
        previous = change["sqnr_after_db"]
    assert report["end_sqnr_db"] == previous
    unchanged = set(before) - {c["value"] for c in report["changed"]}
    assert unchanged and all(after[name] == before[name] for name in unchanged)
    assert report["variants"] >= 1 + len(report["changed"]) and report["seconds"] > 0


def test_variants_are_emitted_with_the_passes_that_follow_even_those_reading_calibration_data():
    """With bias-correct after it, each variant is bias-corrected too: the SQNR the pass ends on is
    the compiled model's in ONNX Runtime on the calibration rows it measured."""
    head = "legalize-opset,freeze-weight-inputs,apply-overrides,canonicalize,fuse,insert-observers,calibrate"
    result = compiled(OUTLIER, f"{head},choose-ranges{{top=2}},bias-correct,place-qdq,fold-weights,cleanup")
    report = result.report.passes[7]
    assert report.name == "choose-ranges" and report.stats["variants"] > 1
    with np.load(OUTLIER / "calib.npz") as data:
        rows = dict(data)
    want = run_onnx(ir.load_model(OUTLIER / "model.onnx"), rows)[0].astype(np.float64)
    got = run_onnx(ir.to_onnx(result.model), rows)[0]
    sqnr = float(10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)))
    assert result.report.ranges["end_sqnr_db"] == pytest.approx(sqnr, abs=0.05)


def test_each_candidate_range_is_what_calibrate_gives_with_that_method_alone():
    model, data = calibrated("method=minmax")
    leaders = [v for v in main_values(model) if "observer" in v.meta]
    chooser = ChooseRanges(ChooseRanges.Options(methods=tuple(METHODS)))
    candidates = chooser._candidates(model, leaders, data)
    for method, observer in METHODS.items():
        alone = observed(calibrated(observer)[0])
        for value in leaders:
            lo, hi = candidates[value][method].range()
            assert (float(lo), float(hi)) == pytest.approx(alone[value.name], rel=1e-6, abs=1e-9), (method, value.name)


def test_no_time_budget_changes_nothing():
    model, data = calibrated("method=minmax")
    before = observed(model)
    ctx = passes.PassContext(calibration_data=data, following="place-qdq,fold-weights,cleanup")
    changed = ChooseRanges(ChooseRanges.Options(time_budget_s=0)).run(model, ctx)
    assert not changed and observed(model) == before
    assert ctx.report["choose-ranges"]["changed"] == [] and ctx.report["choose-ranges"]["variants"] == 1


def test_an_unknown_method_is_named_in_one_line():
    pipeline = "canonicalize,insert-observers,calibrate,choose-ranges{methods=minmax,median},place-qdq"
    with pytest.raises(passes.PassError, match="choose-ranges.*'median'"):
        qcompiler.compile(str(OUTLIER / "model.onnx"), str(OUTLIER / "calib.npz"), pipeline=pipeline)
