"""Sensitivity analysis and assign-precision, measured against ONNX Runtime runs computed here with numpy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import run_onnx

import qcompiler
from qcompiler import ir, passes
from qcompiler.analyze import sensitivity
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.passes.analyses.cost import node_macs
from qcompiler.passes.analyses.sensitivity import Evaluator, units

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
OUTLIER = GOLDEN / "outlier_convnet"
MIX = "/features/mix/mix.0/Conv"  # the Conv reading the 100x channels
EMIT = "place-qdq,fold-weights{reduce_range=true},cleanup"


def calibrated(folder: Path) -> tuple[ir.Model, list[dict[str, np.ndarray]]]:
    model = ir.load_model(folder / "model.onnx")
    data = open_calibration_data(folder / "calib.npz", input_specs(model))
    passes.PassManager("canonicalize,fuse,insert-observers,calibrate").run(
        model, passes.PassContext(calibration_data=data))
    with np.load(folder / "inputs.npz") as inputs:
        return model, [dict(inputs)]


def numpy_sqnr(reference: np.ndarray, actual: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - actual) ** 2))


def test_units_are_the_quantized_groups_weighted_by_their_macs():
    model, _ = calibrated(GOLDEN / "resnet_like")
    found = units(model)
    nodes = list(model.graph.nodes)
    convs = [n for n in nodes if n.op_type == "Conv"]
    conv_units = [u for u in found if u.op_type == "Conv"]
    assert len(conv_units) == len(convs)  # one unit per Conv, its Relu inside it
    assert all(u.work == node_macs(nodes[u.positions[0]]) for u in conv_units)
    assert not any(u.op_type in ("MaxPool", "Flatten", "Reshape") for u in found)  # they add no rounding


def test_a_variant_measures_what_onnx_runtime_computes_for_it():
    model, feeds = calibrated(OUTLIER)
    evaluator = Evaluator(model, EMIT, feeds)
    figure = evaluator.measure({})
    compiled = ir.load_model(OUTLIER / "model.onnx")
    data = open_calibration_data(OUTLIER / "calib.npz", input_specs(compiled))
    passes.PassManager(f"canonicalize,fuse,insert-observers,calibrate,{EMIT}").run(
        compiled, passes.PassContext(calibration_data=data))
    with np.load(OUTLIER / "outputs.npz") as outputs:
        reference = outputs["logits"]
    expected = numpy_sqnr(reference, run_onnx(ir.to_onnx(compiled), feeds[0])[0])
    assert figure.min_sqnr_db == pytest.approx(expected, abs=0.02)
    assert evaluator.measure({}).sqnr_db == figure.sqnr_db  # variants do not touch the calibrated model
    assert evaluator.variants.hits == 4  # the second variant took the codes of its 4 weights from the first


def test_sensitivity_ranks_the_layer_reading_the_outliers_first(tmp_path):
    cache = tmp_path / "sensitivity.json"
    table = sensitivity(OUTLIER / "model.onnx", OUTLIER / "calib.npz", eval=OUTLIER / "inputs.npz", cache=cache)
    first = table.ranked()[0]
    assert first.unit.name == MIX and first.gain_db > 25
    assert first.alone.min_sqnr_db < 5 < min(r.alone.min_sqnr_db for r in table.rows if r is not first)
    assert table.runs == 1 + 2 * len(table.rows)
    again = sensitivity(OUTLIER / "model.onnx", OUTLIER / "calib.npz", eval=OUTLIER / "inputs.npz", cache=cache)
    assert again.runs == 0 and [r.gain_db for r in again.ranked()] == [r.gain_db for r in table.ranked()]
    assert any(MIX in line for line in table.lines()[2:3])


def test_worker_processes_measure_the_same_figures():
    model, feeds = calibrated(OUTLIER)
    evaluator = Evaluator(model, EMIT, feeds)
    found = units(model)
    from qcompiler.passes.analyses.sensitivity import measure_all

    variants = [({u: "fp32"}, None) for u in found]
    assert measure_all(evaluator, variants, jobs=2) == measure_all(evaluator, variants, jobs=1)


def test_a_metric_budget_promotes_until_the_drop_is_small_enough(tmp_path):
    with np.load(OUTLIER / "outputs.npz") as outputs:
        np.save(tmp_path / "float_top1.npy", outputs["logits"].argmax(1))
    metric = tmp_path / "agreement.py"
    metric.write_text("import numpy as np\n"
                      f"TOP1 = np.load({str(tmp_path / 'float_top1.npy')!r})\n"
                      "def top1(outputs):\n"
                      "    return float(np.mean(outputs['logits'].argmax(1) == TOP1[:len(outputs['logits'])]))\n")
    recipe = {"passes": {"assign-precision": {"metric": f"{metric}:top1", "max_drop": 0.1}}}
    result = qcompiler.compile(OUTLIER / "model.onnx", OUTLIER / "calib.npz", eval=OUTLIER / "inputs.npz",
                               pipeline="mixed", recipe=recipe)
    precision = result.report.precision
    assert [p["unit"] for p in precision["promoted"]] == [MIX]
    assert result.report.outputs[0].top1_agreement >= 0.9
    assert precision["budget"] == "metric drop <= 0.1 (float model: 1)"


@pytest.mark.parametrize("options, message", [
    ("", "needs one budget"),
    ("{min_sqnr_db=20,metric=m.py:f,max_drop=1}", "needs one budget"),
    ("{metric=m.py:f}", "needs max_drop"),
    ("{min_sqnr_db=20,levels=int4}", "takes some of dynamic, w8a16, fp16, fp32, not int4"),
])
def test_bad_options_are_refused_before_any_run(options, message):
    model, feeds = calibrated(OUTLIER)
    context = passes.PassContext(calibration_data=feeds)
    with pytest.raises(passes.PassError, match=message):
        passes.PassManager(f"assign-precision{options},{EMIT}").run(model, context)


def test_the_pass_must_come_before_place_qdq():
    model, feeds = calibrated(OUTLIER)
    with pytest.raises(passes.PassError, match="before place-qdq"):
        passes.PassManager(f"{EMIT},assign-precision{{min_sqnr_db=20}}").run(
            model, passes.PassContext(calibration_data=feeds))


def test_a_budget_all_int8_meets_changes_nothing():
    model, feeds = calibrated(GOLDEN / "mlp")
    context = passes.PassContext(evaluation_data=feeds)
    result = passes.PassManager(f"assign-precision{{min_sqnr_db=10}},{EMIT}").run(model, context)
    report = context.report["assign-precision"]
    assert report["promoted"] == [] and report["runs"] == 1 and report["int8_work_share"] == 1.0
    assert not any("precision" in n.meta for n in model.graph.nodes) and result.changed
    assert json.loads(json.dumps(report)) == report and math.isfinite(report["seconds"])


@pytest.mark.parametrize("case", ["resnet_like", "mlp", "outlier_convnet", "transformer_block", "unet_like"])
def test_the_cost_estimate_agrees_with_the_kernels_onnx_runtime_chooses(case):
    """cost.runs_integer predicts ORT's fusions; kernels.py reads them from ORT's optimized graph."""
    from qcompiler.kernels import kernel_report
    from qcompiler.passes.analyses.cost import COMPUTE_OPS, runs_integer
    from qcompiler.passes.infra.target import Target

    model, _ = calibrated(GOLDEN / case)
    found = [u for u in units(model) if u.op_type in COMPUTE_OPS]
    for levels in ({}, {found[1]: "fp16"}, {found[-1]: "w8a16"}):
        variant = ir.clone_model(model)
        nodes = list(variant.graph.nodes)
        for unit, level in levels.items():
            for position in unit.positions:
                nodes[position].meta["precision"] = level
        passes.PassManager(EMIT).run(variant, passes.PassContext())
        predicted = {n.name for n in variant.graph.nodes
                     if n.op_type in COMPUTE_OPS and not runs_integer(n, Target.named("ort-cpu"))}
        assert predicted == set(kernel_report(variant).float_nodes), levels
