"""Pass contracts: a pipeline whose order cannot meet what its passes need fails before any pass runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompiler import ir, passes
from qcompiler.cli import main
from qcompiler.data import input_specs, open_calibration_data

MLP = Path(__file__).resolve().parent.parent / "golden" / "mlp"


def run(pipeline: str, model: ir.Model) -> None:
    data = open_calibration_data(MLP / "calib.npz", input_specs(model))
    passes.PassManager(pipeline).run(model, passes.PassContext(calibration_data=data))


def refusal(pipeline: str, model: ir.Model) -> passes.PipelineError:
    """The error running `pipeline` on `model` raises, which must point at its place-qdq."""
    with pytest.raises(passes.PipelineError) as caught:
        run(pipeline, model)
    assert caught.value.column == pipeline.index("place-qdq") + 1
    return caught.value


def test_fold_weights_before_place_qdq_fails_before_any_pass_runs():
    model = ir.load_model(MLP / "model.onnx")
    before = ir.print_model(model)
    error = refusal("canonicalize,fuse,insert-observers,calibrate,fold-weights,place-qdq", model)
    assert error.message == ("place-qdq must run before the model is weights-folded (weights are stored as "
                             "integer codes and biases as int32), but an earlier fold-weights already made "
                             "it so: run place-qdq first")
    assert ir.print_model(model) == before


def test_place_qdq_without_calibration_names_the_missing_fact_and_its_pass():
    error = refusal("canonicalize,insert-observers,place-qdq,cleanup", ir.load_model(MLP / "model.onnx"))
    assert error.message == ("place-qdq needs the model calibrated (every observed value carries its measured "
                             "range), which no earlier pass provides and the model is not; calibrate provides "
                             "it: run it before place-qdq")


def test_a_pass_inside_a_named_pipeline_is_pointed_at_by_the_name():
    with pytest.raises(passes.PipelineError) as caught:
        run("fold-weights,int8", ir.load_model(MLP / "model.onnx"))
    assert caught.value.column == len("fold-weights,") + 1 and caught.value.message.startswith("place-qdq must run")


def test_a_model_that_arrives_calibrated_meets_place_qdq_without_calibrate(tmp_path):
    model = ir.load_model(MLP / "model.onnx")
    run("canonicalize,fuse,insert-observers,calibrate", model)
    text = ir.print_model(model, weights="inline")
    reread = ir.parse_model(text)
    passes.PassManager("place-qdq,fold-weights,cleanup").run(reread)
    assert any(n.op_type == "QuantizeLinear" for n in reread.graph.nodes)


def test_qc_opt_reports_a_misordered_pipeline_with_its_column(tmp_path, capsys):
    pipeline = "insert-observers,calibrate,fold-weights,place-qdq"
    code = main(["opt", str(MLP / "model.onnx"), "--calib", str(MLP / "calib.npz"), "--pipeline", pipeline,
                 "-o", str(tmp_path / "out.qir")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"qc: error: pipeline column {pipeline.index('place-qdq') + 1}: place-qdq must")
    assert not (tmp_path / "out.qir").exists()
