"""Executors: Ray tasks give the same sensitivity table and calibration ranges as local processes.

A Ray instance of two CPUs is started here, on loopback, and shut down after the module.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from qcompiler import ir, passes
from qcompiler.analyze import sensitivity
from qcompiler.cli import main
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.passes import LocalProcesses, PassContext, PassError, PassManager, RayTasks, executor_named
from qcompiler.passes.infra.executor import RAY_MISSING

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
OUTLIER = GOLDEN / "outlier_convnet"


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def table_of(executor) -> dict:
    return sensitivity(OUTLIER / "model.onnx", OUTLIER / "calib.npz", eval=OUTLIER / "inputs.npz", samples=64,
                       jobs=2, executor=executor).to_dict()


def figures(row: dict) -> list[float]:
    return [*row["alone"]["sqnr_db"], *row["without"]["sqnr_db"], row["gain_db"]]


def test_ray_tasks_measure_the_same_sensitivity_table_as_local_processes(ray_instance):
    on_ray, local = table_of(RayTasks()), table_of("local")
    assert on_ray["runs"] == local["runs"] == 1 + 2 * len(local["rows"]) > 3
    assert on_ray["all_int8"]["sqnr_db"] == pytest.approx(local["all_int8"]["sqnr_db"], abs=1e-3)
    assert [(r["unit"], r["op"], r["work"]) for r in on_ray["rows"]] == [(r["unit"], r["op"], r["work"])
                                                                          for r in local["rows"]]
    for mine, theirs in zip(on_ray["rows"], local["rows"]):
        assert figures(mine) == pytest.approx(figures(theirs), abs=1e-3), mine["unit"]
        assert mine["alone"]["cost"] == theirs["alone"]["cost"] and mine["without"]["cost"] == theirs["without"]["cost"]


def observed_ranges(pipeline: str, executor) -> dict[str, tuple[float, float]]:
    model = ir.load_model(OUTLIER / "model.onnx")
    data = open_calibration_data(OUTLIER / "calib.npz", input_specs(model))
    PassManager(pipeline).run(model, PassContext(calibration_data=data, executor=executor))
    return {v.name: v.observed_range for node in model.graph.nodes for v in node.outputs if v.observed_range}


def test_calibration_shards_on_ray_give_the_ranges_of_one_process(ray_instance):
    one = observed_ranges("canonicalize,fuse,insert-observers,calibrate", LocalProcesses())
    shards = observed_ranges("canonicalize,fuse,insert-observers,calibrate{jobs=2}", RayTasks())
    assert len(one) > 3 and shards.keys() == one.keys()
    for name, (lo, hi) in one.items():
        assert shards[name] == pytest.approx((lo, hi), rel=1e-6, abs=1e-6), name


def test_an_error_in_a_ray_task_is_the_error_itself(ray_instance):
    with pytest.raises(PassError, match="^--executor 'dask': expected local, ray or ray://ADDRESS$"):
        RayTasks().map(executor_named, ["local", "dask"])  # a function the workers can import, failing there


def test_executor_text_names_local_or_ray_and_nothing_else():
    assert isinstance(executor_named("local"), LocalProcesses)
    assert executor_named("ray").name == "ray"
    assert executor_named("ray://10.1.2.3:10001").address == "ray://10.1.2.3:10001"
    for bad in ("Ray", "ray://", "dask"):
        with pytest.raises(PassError, match="expected local, ray or ray://ADDRESS"):
            executor_named(bad)


def test_without_ray_installed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when it is not installed
    with pytest.raises(PassError) as caught:
        passes.executor_named("ray")
    assert str(caught.value) == RAY_MISSING


def test_an_address_no_cluster_answers_is_one_error_line(tmp_path):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1", "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "qcompiler.cli", "sensitivity", str(OUTLIER / "model.onnx"),
                           "--calib", str(OUTLIER / "calib.npz"), "--samples", "8", "--jobs", "2",
                           "--executor", f"ray://127.0.0.1:{port}"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"qc: error: --executor ray://127.0.0.1:{port}: no Ray cluster answers at ray://127.0.0.1:{port}: "
        "ray client connection timeout"]


def test_compile_names_a_bad_executor_in_one_line(tmp_path, capsys):
    mlp = GOLDEN / "mlp"
    code = main(["compile", str(mlp / "model.onnx"), "--calib", str(mlp / "calib.npz"), "-o", str(tmp_path / "q.onnx"),
                 "--executor", "dask"])
    assert code == 1
    assert capsys.readouterr().err.splitlines() == ["qc: error: --executor 'dask': expected local, ray or ray://ADDRESS"]
    assert not (tmp_path / "q.onnx").exists()
