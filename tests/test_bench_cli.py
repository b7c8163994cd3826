"""The benchmark in every compile report and `qc bench`: figures per setting, feeds per batch, sizes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import compile, ir
from qcompiler.bench import Benchmark, batch_feed, benchmark, file_bytes, quantized_kind, random_feeds
from qcompiler.cli import main
from qcompiler.data import InputSpec, input_specs
from qcompiler.ir.evaluate import Latency
from qcompiler.validate import LatencyPair

MLP = Path(__file__).resolve().parent.parent / "golden" / "mlp"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """golden/mlp compiled with held-out data, and its quantized model saved."""
    result = compile(MLP / "model.onnx", MLP / "calib.npz", eval=MLP / "inputs.npz")
    path = tmp_path_factory.mktemp("bench") / "mlp_int8.onnx"
    result.save(path)
    return result, path


def qc(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def check_settings(settings: list[dict], expected: list[tuple[int, int]]) -> None:
    """Positive figures, p90 >= median, rows/s = batch / median, ratio = quantized / float median."""
    assert [(s["batch"], s["threads"]) for s in settings] == expected
    for s in settings:
        for side in ("float", "quantized"):
            figures = s[side]
            assert 0 < figures["median_ms"] <= figures["p90_ms"] and figures["runs"] >= 1
            assert figures["rows_per_s"] == pytest.approx(s["batch"] * 1e3 / figures["median_ms"], rel=1e-12)
        assert s["ratio"] == pytest.approx(s["quantized"]["median_ms"] / s["float"]["median_ms"], rel=1e-12)


def test_compile_report_holds_the_benchmark_of_every_setting(compiled):
    report = compiled[0].report
    plain = json.loads(report.to_json())["bench"]
    check_settings(plain["settings"], [(1, 1), (8, 1), (1, 0), (8, 0)])
    assert plain["quantized"] == "int8" and plain["notes"] == []
    assert plain["size_bytes"] == report.size_bytes and report.size_bytes["quantized"] < report.size_bytes["float"]
    assert report.latency is report.bench.settings[0]  # batch 1, 1 thread: what the report's ratio is
    summary = "\n".join(report.summary())
    assert "speed, float vs int8 in ONNX Runtime:" in summary
    for setting in plain["settings"]:
        assert f"    {setting['verdict']}" in summary
    rows = [line.split()[:2] for line in report.summary() if line.startswith("    ") and line.split()[0].isdigit()]
    assert rows == [["1", "1"], ["8", "1"], ["1", "all"], ["8", "all"]]
    slower = [s for s in plain["settings"] if round(s["ratio"], 1) > 1.0]
    warned = [w for w in report.warnings if w.startswith("int8 is slower than float here (")]
    assert len(warned) == (1 if slower else 0)


def test_batch_feed_takes_the_rows_in_turn():
    x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    ids = np.array([[7], [8], [9]], np.int64)
    fed = batch_feed({"x": x, "ids": ids}, 8)
    np.testing.assert_array_equal(fed["x"], x[[0, 1, 2, 0, 1, 2, 0, 1]])
    np.testing.assert_array_equal(fed["ids"], ids[[0, 1, 2, 0, 1, 2, 0, 1]])
    np.testing.assert_array_equal(batch_feed({"x": x}, 1)["x"], x[:1])


def relu_model(batch: int | str) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_fixed_batch_runs_only_its_own_batch():
    model = relu_model(2)
    specs = input_specs(ir.load_model(model))
    feeds = {"x": np.ones((2, 16), np.float32)}
    found = benchmark(model.SerializeToString(), model.SerializeToString(), feeds, specs,
                      size_bytes={"float": 1, "quantized": 1}, budget_s=0.01)
    assert [(p.batch, p.threads) for p in found.settings] == [(2, 1), (2, 0)]
    assert found.notes == ["the model's batch dim is fixed at 2: batch 1, 8 skipped, batch 2 measured"]


def test_a_batch_whose_run_passes_the_budget_is_skipped():
    model = relu_model("N").SerializeToString()
    specs = [InputSpec("x", np.dtype(np.float32), ("N", 16))]
    found = benchmark(model, model, {"x": np.ones((1, 16), np.float32)}, specs, size_bytes={"float": 1, "quantized": 1},
                      threads=(1,), budget_s=0.0)
    assert [p.batch for p in found.settings] == [1]
    (note,) = found.notes
    assert note.startswith("batch 8 with 1 thread skipped: a run would take about ") and "beyond the 0 s budget" in note


def pair(float_ms: float, quant_ms: float, batch: int, threads: int) -> LatencyPair:
    return LatencyPair(Latency(float_ms, float_ms, 5), Latency(quant_ms, quant_ms, 5), batch, threads)


def test_warning_lists_the_slower_settings_only():
    found = Benchmark("fp16", {"float": 2000, "quantized": 1000},
                      [pair(1.0, 1.7, 1, 1), pair(8.0, 4.0, 8, 1), pair(1.0, 1.01, 1, 0), pair(8.0, 10.0, 8, 0)])
    assert found.warnings() == [("fp16 is slower than float here (1.7x at batch 1, 1 thread; 1.2x at batch 8, "
                                 "ORT's default threads): keep the float model, or quantize only the large layers")]
    assert found.verdicts()[1] == "fp16 is 2.0x faster than float here (4 ms vs 8 ms at batch 8, 1 thread)"
    assert Benchmark("int8", {}, [pair(2.0, 1.0, 1, 1)]).warnings() == []
    lines = found.lines()
    assert lines[0].split() == ["batch", "threads", "float", "median", "p90", "rows/s", "fp16", "median", "p90",
                                "rows/s", "speed-up"]
    assert lines[2].split() == ["8", "1", "8", "ms", "8", "ms", "1,000", "4", "ms", "4", "ms", "2,000", "2.00x"]


def dq_model(dtype: int, cast_to_half: bool) -> ir.Model:
    """y = DequantizeLinear(w: dtype) * x, optionally through a Cast to float16 and back."""
    w = numpy_helper.from_array(np.ones(4, np.int8), "w") if dtype == TensorProto.INT8 else \
        helper.make_tensor("w", dtype, [4], [1, 1, 1, 1])
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]), helper.make_node("Mul", ["x", "wf"], ["m"])]
    if cast_to_half:
        nodes += [helper.make_node("Cast", ["m"], ["h"], to=TensorProto.FLOAT16),
                  helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
    else:
        nodes.append(helper.make_node("Identity", ["m"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [w, numpy_helper.from_array(np.float32(0.5), "s")])
    return ir.load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def test_quantized_kind_reads_the_model(compiled):
    assert quantized_kind(compiled[0].model) == "int8"
    assert quantized_kind(dq_model(TensorProto.INT4, cast_to_half=False)) == "int4"
    assert quantized_kind(dq_model(TensorProto.INT8, cast_to_half=True)) == "the quantized model"  # int8 and fp16
    assert quantized_kind(ir.load_model(MLP / "model.onnx")) == "the quantized model"  # nothing quantized


def test_random_feeds_follow_the_specs():
    specs = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4)), InputSpec("ids", np.dtype(np.int64), ("N", "T"))]
    feeds = random_feeds(specs)
    assert (feeds["x"].shape, feeds["x"].dtype, feeds["ids"].shape) == ((1, 3, 4), np.float32, (1, 1))
    assert feeds["x"].std() > 0 and not feeds["ids"].any()
    assert random_feeds(specs, {"ids": (2, 5)})["ids"].shape == (2, 5)
    with pytest.raises(ValueError, match="--shape names no input of the model: y"):
        random_feeds(specs, {"y": (1,)})


def test_file_bytes_counts_external_data(tmp_path):
    model = relu_model("N")
    model.graph.initializer.append(numpy_helper.from_array(np.ones(4096, np.float32), "unused"))
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    assert file_bytes(tmp_path / "m.onnx") == (tmp_path / "m.onnx").stat().st_size + 4096 * 4
    assert (tmp_path / "weights.bin").stat().st_size == 4096 * 4


def test_qc_bench_prints_the_table_and_writes_json(compiled, tmp_path, capsys):
    _, quant = compiled
    out_json = tmp_path / "bench.json"
    code, out, err = qc(capsys, "bench", MLP / "model.onnx", quant, "--data", MLP / "inputs.npz", "--batch", 4,
                        "--threads", 1, "--budget", 0.05, "--json", out_json)
    assert code == 0, err
    plain = json.loads(out_json.read_text())
    check_settings(plain["settings"], [(1, 1), (4, 1)])
    assert plain["size_bytes"] == {"float": (MLP / "model.onnx").stat().st_size, "quantized": quant.stat().st_size}
    lines = out.splitlines()
    assert lines[0].startswith("size: float ") and "int8" in lines[0]
    assert lines[1].split()[:3] == ["batch", "threads", "float"]
    assert [line.split()[:2] for line in lines[2:4]] == [["1", "1"], ["4", "1"]]
    assert [s["verdict"] for s in plain["settings"]] == lines[4:6]


def test_qc_bench_without_data_uses_random_inputs(compiled, capsys):
    code, out, err = qc(capsys, "bench", MLP / "model.onnx", compiled[1], "--threads", 0, "--budget", 0.02)
    assert code == 0, err
    assert "at batch 1, ORT's default threads)" in out and "at batch 8, ORT's default threads)" in out


@pytest.mark.parametrize("args, code, message", [
    (["missing.onnx", "QUANT"], 1, "qc: error: missing.onnx: no such file"),
    (["FLOAT", "model.qir"], 1, "qc: error: model.qir: qc bench times ONNX files (.onnx)"),
    (["FLOAT", "QUANT", "--shape", "y=1,64"], 1, "qc: error: --shape names no input of the model: y (inputs: x)"),
    (["FLOAT", "QUANT", "--shape", "x=1,a"], 2, "argument --shape: expected INPUT=D0,D1,... with positive dims"),
    (["FLOAT", "QUANT", "--batch", "0"], 2, "argument --batch: must be at least 1, not 0"),
])
def test_qc_bench_errors_are_one_line_without_traceback(compiled, capsys, args, code, message):
    paths = {"FLOAT": str(MLP / "model.onnx"), "QUANT": str(compiled[1])}
    if code == 2:
        with pytest.raises(SystemExit) as exit_:
            main(["bench", *(paths.get(a, a) for a in args)])
        got, err = exit_.value.code, capsys.readouterr().err
    else:
        got, _, err = qc(capsys, "bench", *(paths.get(a, a) for a in args))
    assert got == code and message in err and "Traceback" not in err
