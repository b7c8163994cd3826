"""--mlflow: an auto walk read back from a real MLflow store holds one run per rung, with the walk's figures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_onnx
from mlflow.tracking import MlflowClient

from qcompiler import ir
from qcompiler.auto import auto
from qcompiler.cli import main
from qcompiler.tracking import DEFAULT_EXPERIMENT, MLFLOW_MISSING, AutoTracker

MLP = Path(__file__).resolve().parent.parent / "golden" / "mlp"
PARENT = "mlflow.parentRunId"


@pytest.fixture(scope="module")
def walk():
    return auto(MLP / "model.onnx", MLP / "calib.npz", eval=MLP / "inputs.npz", tolerance=5.0)


@pytest.fixture(scope="module")
def logged(walk, tmp_path_factory) -> tuple[str, str, Path]:
    """(store URI, parent run id, the store's folder) of `walk` logged once: a new store costs seconds."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'store.db'}"
    return uri, AutoTracker(uri).log(walk, "mlp"), folder


def runs_in(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=100)


def test_each_rung_is_a_run_under_the_walk_with_the_figures_auto_measured(walk, logged):
    assert walk.chosen is not None and len(walk.attempts) >= 3
    uri, parent, _ = logged
    runs = runs_in(uri)
    children = [r for r in runs if r.data.tags.get(PARENT) == parent]
    assert len(runs) == 1 + len(walk.attempts) and len(children) == len(walk.attempts)
    (top,) = [r for r in runs if r.info.run_id == parent]
    assert top.data.tags["qc.chosen"] == walk.chosen.rung and top.data.metrics["candidates"] == len(walk.attempts)
    assert top.data.params["tolerance"] == walk.tolerance
    by_rung = {r.info.run_name: r for r in children}
    assert set(by_rung) == {a.rung for a in walk.attempts}
    assert [r.info.run_name for r in children if r.data.tags["qc.status"] == "accepted"] == [walk.chosen.rung]
    for attempt in walk.attempts:
        run = by_rung[attempt.rung]
        assert run.data.tags["qc.reason"] == attempt.verdict and run.data.params["pipeline"] == attempt.pipeline
        assert run.data.metrics["latency_ratio"] == pytest.approx(attempt.latency_ratio, rel=1e-9)
        assert run.data.metrics["size_ratio"] == pytest.approx(attempt.size_ratio, rel=1e-9)
        for output in attempt.result.report.outputs:
            assert run.data.metrics[f"accuracy/{output.name}"] == pytest.approx(output.measure_value, rel=1e-9)
            assert run.data.metrics[f"sqnr_db/{output.name}"] == pytest.approx(output.sqnr_db, rel=1e-9)
            assert run.data.params[f"measure/{output.name}"] == output.measure


def test_the_chosen_run_holds_the_chosen_model_and_every_run_its_report(walk, logged, tmp_path):
    uri, parent, folder = logged
    client = MlflowClient(tracking_uri=uri)
    runs = {r.info.run_name: r.info.run_id for r in runs_in(uri) if r.data.tags.get(PARENT) == parent}
    for rung, run_id in runs.items():
        names = {a.path for a in client.list_artifacts(run_id)}
        assert names == ({"compile_report.json", "model.onnx"} if rung == walk.chosen.rung else {"compile_report.json"})
    logged = client.download_artifacts(runs[walk.chosen.rung], "model.onnx", str(tmp_path))
    with np.load(MLP / "inputs.npz") as inputs:
        feeds = dict(inputs)
    assert np.allclose(run_onnx(logged, feeds)[0], run_onnx(ir.to_onnx(walk.chosen.result.model), feeds)[0],
                       rtol=1e-5, atol=1e-5)
    assert (folder / "mlruns").is_dir()  # artifacts beside the database, not in the working folder


def test_cli_logs_to_sqlite_here_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["compile", str(MLP / "model.onnx"), "--calib", str(MLP / "calib.npz"), "--eval",
                 str(MLP / "inputs.npz"), "--auto", "--tolerance", "5", "--mlflow", "-o", "out.onnx"])
    assert code == 0
    out = capsys.readouterr().out
    assert "logged 3 rungs to MLflow at sqlite:///mlflow.db, under run " in out
    runs = runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(runs) == 4 and sum(r.data.tags.get("qc.status") == "accepted" for r in runs) == 1


def test_without_mlflow_installed_the_error_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    for name in [n for n in sys.modules if n == "mlflow" or n.startswith("mlflow.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what the import meets when it is not installed
    code = main(["compile", str(MLP / "model.onnx"), "--calib", str(MLP / "calib.npz"), "--auto", "--mlflow",
                 "-o", str(tmp_path / "out.onnx")])
    assert code == 1 and capsys.readouterr().err.splitlines() == [f"qc: error: {MLFLOW_MISSING}"]
    assert not (tmp_path / "out.onnx").exists()  # refused before any rung ran


def test_mlflow_without_auto_and_an_unknown_store_are_one_line_each(tmp_path, capsys):
    common = ["compile", str(MLP / "model.onnx"), "--calib", str(MLP / "calib.npz"), "-o", str(tmp_path / "out.onnx")]
    assert main([*common, "--mlflow"]) == 2
    assert capsys.readouterr().err.splitlines() == ["qc: error: --mlflow logs the rungs of --auto: add --auto or drop "
                                                    "--mlflow"]
    assert main([*common, "--auto", "--mlflow", "bogus://store"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("qc: error: --mlflow bogus://store: ") and "unsupported URI 'bogus://store'" in line


def test_a_metric_function_is_logged_per_rung_as_its_value(logged, tmp_path):
    uri, _, _ = logged
    with np.load(MLP / "outputs.npz") as outputs:
        np.save(tmp_path / "float_top1.npy", outputs[next(iter(outputs))].argmax(1))
    metric = tmp_path / "agreement.py"
    metric.write_text("import numpy as np\n"
                      f"TOP1 = np.load({str(tmp_path / 'float_top1.npy')!r})\n"
                      "def top1(outputs):\n"
                      "    (scores,) = outputs.values()\n"
                      "    return float(np.mean(scores.argmax(1) == TOP1))\n")
    walk = auto(MLP / "model.onnx", MLP / "calib.npz", eval=MLP / "inputs.npz", tolerance=0.05,
                metric=f"{metric}:top1")
    parent = AutoTracker(uri, experiment="metric").log(walk, "mlp")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("metric")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get(PARENT) == parent}
    with np.load(MLP / "inputs.npz") as inputs:
        rows = [{name: inputs[name][i:i + 1] for name in inputs.files} for i in range(len(inputs[inputs.files[0]]))]
    for attempt in walk.attempts:  # row by row, as auto feeds them: dynamic quantization follows the batch
        model = ir.to_onnx(attempt.result.model)
        scores = np.concatenate([run_onnx(model, row)[0] for row in rows])
        agreement = float(np.mean(scores.argmax(1) == np.load(tmp_path / "float_top1.npy")))
        assert runs[attempt.rung].data.metrics["metric"] == pytest.approx(agreement, abs=1e-12), attempt.rung
