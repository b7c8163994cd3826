"""Per-value error analysis: figures against numpy on ONNX Runtime outputs, pairing, ranking, `qc debug`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

import qcompiler
from qcompiler import ir, passes
from qcompiler.cli import main
from qcompiler.data import CalibrationData, input_specs, open_calibration_data
from qcompiler.debug import FLOAT_VALUES_KEY, annotate, record_float_names, value_errors
from qcompiler.ir.evaluate import open_session
from qcompiler.ir.naming import unique_names

GOLDEN = Path(__file__).parent.parent / "golden" / "resnet_like"
FLOAT = GOLDEN / "model.onnx"
INPUTS = GOLDEN / "inputs.npz"
COARSE_CONV = "/features/features.4/body/body.3/Conv"
DOWNSTREAM = "/features/features.6/Relu_output_0"  # two residual blocks after COARSE_CONV
PIPELINE = "canonicalize,fuse,insert-observers,calibrate,place-qdq,fold-weights{reduce_range=true},cleanup"


@pytest.fixture(scope="module")
def coarse():
    """The compiled model with COARSE_CONV's int8 weight codes rounded to multiples of 16: with
    reduce_range's codes in [-64, 64] that leaves 9 levels, a 3-4 bit weight."""
    model = qcompiler.compile(FLOAT, GOLDEN / "calib.npz", eval=INPUTS).model
    conv = next(node for node in model.graph.nodes if node.name == COARSE_CONV)
    codes = conv.inputs[1].producer.inputs[0]
    codes.const = np.clip(np.round(codes.const / 16) * 16, -128, 127).astype(codes.const.dtype)
    return model


@pytest.fixture(scope="module")
def coarse_result(coarse):
    return value_errors(FLOAT, coarse, batches(8))


def batches(rows: int) -> CalibrationData:
    """The evaluation inputs in feeds of `rows` samples."""
    return open_calibration_data(INPUTS, input_specs(ir.load_model(FLOAT)), batch_size=rows)


@pytest.fixture(scope="module")
def ort_quantized(tmp_path_factory) -> Path:
    """The float model quantized by ONNX Runtime's quantize_static (QDQ, per channel)."""

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": np.load(GOLDEN / "calib.npz")["x"][:16]}])

        def get_next(self):
            return next(self.feeds, None)

    path = tmp_path_factory.mktemp("ort") / "quantized.onnx"
    quantize_static(str(FLOAT), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True)
    return path


def reference(quant: onnx.ModelProto, rows) -> dict[str, tuple[float, float, float, float]]:
    """(SQNR, added, cosine, max error) per row name from numpy on ONNX Runtime outputs of both models
    fed all inputs at once; added noise walks the float graph's producers to the nearest rows."""
    float_proto = onnx.load(FLOAT)
    feeds = {"x": np.load(INPUTS)["x"]}
    expected = run_with_outputs(float_proto, [row.float_name for row in rows], feeds)
    actual = run_with_outputs(quant, [read_as(quant.graph, row.name) for row in rows], feeds)
    nsr, figures = {}, {}
    for row, ref, q in zip(rows, expected, actual):
        r, q = ref.astype(np.float64).ravel(), q.astype(np.float64).ravel()
        nsr[row.float_name] = np.sum((r - q) ** 2) / np.sum(r**2)
        cosine = r @ q / np.sqrt((r @ r) * (q @ q))
        figures[row.name] = (-10 * np.log10(nsr[row.float_name]), cosine, np.abs(r - q).max())
    producer = {out: node for node in float_proto.graph.node for out in node.output}

    def carried(name: str) -> float:
        if name in nsr:
            return nsr[name]
        node = producer.get(name)
        return 0.0 if node is None else max((carried(i) for i in node.input if i), default=0.0)

    result = {}
    for row in rows:
        node = producer.get(row.float_name)
        received = 0.0 if node is None else max(carried(i) for i in node.input if i)
        sqnr, cosine, max_error = figures[row.name]
        added = -10 * np.log10(max(nsr[row.float_name] - received, 1e-12))
        result[row.name] = (sqnr, added, cosine, max_error)
    return result


def run_with_outputs(proto: onnx.ModelProto, names: list[str], feeds: dict) -> list[np.ndarray]:
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    present = {output.name for output in proto.graph.output}
    proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names) if n not in present)
    return open_session(proto).run(names, feeds)


def read_as(graph: onnx.GraphProto, name: str) -> str:
    """The DequantizeLinear output when `name` feeds only a QuantizeLinear whose readers are DQs."""
    readers = [node for node in graph.node if name in node.input]
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or name in {o.name for o in graph.output}:
        return name
    dqs = [node for node in graph.node if readers[0].output[0] in node.input]
    return dqs[0].output[0] if dqs and all(node.op_type == "DequantizeLinear" for node in dqs) else name


def assert_matches_reference(result, quant: onnx.ModelProto) -> None:
    expected = reference(quant, result.rows)
    for row in result.rows:
        measured = (row.sqnr_db, row.added_db, row.cosine, row.max_abs_error)
        np.testing.assert_allclose(measured, expected[row.name], rtol=1e-5, err_msg=row.name)


def test_figures_match_numpy_on_onnx_runtime_outputs(coarse, coarse_result):
    assert len(coarse_result.rows) == coarse_result.float_values == 23 and coarse_result.batches == 4
    assert_matches_reference(coarse_result, ir.to_onnx(coarse))


def test_coarse_weights_rank_their_conv_worst_and_downstream_values_only_inherit(coarse_result):
    worst = coarse_result.worst(1)[0]
    assert (worst.op, worst.node) == ("Conv", COARSE_CONV)
    far = next(row for row in coarse_result.rows if row.float_name == DOWNSTREAM)
    assert far.sqnr_db < worst.sqnr_db  # its error is large...
    assert far.added_db > worst.added_db + 20  # ...but it comes from upstream
    table = coarse_result.table(3).splitlines()
    assert table[0].split() == ["rank", "value", "op", "node", "SQNR", "added", "cosine", "max|err|"]
    assert len(table) == 4 and table[1].split()[:4] == ["1", worst.name, "Conv", COARSE_CONV]


def test_a_small_memory_budget_taps_in_groups_with_nearly_the_same_figures(coarse, coarse_result):
    """Values left untapped in a group may run inside fused integer kernels, whose requantization
    can round an element to the neighbouring code (how often depends on the CPU's kernels). A
    max-abs statistic follows one worst element, so it may move by up to one quantization step
    of the coarsest activation; the averaged figures barely move."""
    grouped = value_errors(FLOAT, coarse, batches(8), memory_budget_mb=4)
    assert grouped.groups > 1 and grouped.batches == 4
    step = max(float(np.max(v.quant.scale)) for v in coarse.graph.all_values() if v.quant is not None and v.const is None)
    for a, b in zip(coarse_result.rows, grouped.rows):
        assert a.name == b.name
        assert abs(a.sqnr_db - b.sqnr_db) < 0.25 and abs(a.added_db - b.added_db) < 0.25, a.name
        assert abs(a.cosine - b.cosine) < 1e-3 and abs(a.max_abs_error - b.max_abs_error) <= step, a.name


def test_compile_records_the_float_names(coarse_result):
    assert coarse_result.pairing == "recorded"


def test_recorded_names_pair_by_identity_through_renames(tmp_path):
    model = ir.load_model(FLOAT)
    float_names = unique_names(model.graph)
    data = open_calibration_data(GOLDEN / "calib.npz", input_specs(model))
    passes.PassManager(PIPELINE).run(model, passes.PassContext(calibration_data=data))
    renamed = next(node for node in model.graph.nodes if node.name == COARSE_CONV).outputs[0]
    renamed.name = "renamed"
    record_float_names(model, float_names)
    links = json.loads(model.metadata[FLOAT_VALUES_KEY])
    assert links["logits_float"] == "logits" and links["renamed"] == float_names[renamed]
    assert len(links) == 23 and all(q == f for q, f in links.items() if q not in ("logits_float", "renamed"))

    ir.save_model(model, tmp_path / "recorded.onnx")
    recorded = value_errors(FLOAT, tmp_path / "recorded.onnx", batches(32))
    assert recorded.pairing == "recorded" and len(recorded.rows) == 23
    assert "recorded when it compiled" in recorded.describe()
    del model.metadata[FLOAT_VALUES_KEY]
    by_names = value_errors(FLOAT, model, batches(32))
    assert by_names.pairing == "names" and len(by_names.rows) == 22  # "renamed" has no namesake
    logits = {row.float_name: row for row in by_names.rows}["logits"]
    recorded_logits = {row.float_name: row for row in recorded.rows}["logits"]
    assert (recorded_logits.name, logits.name) == ("logits_float", "logits")  # one value, seen through its Q/DQ
    assert recorded_logits.sqnr_db == pytest.approx(logits.sqnr_db, rel=1e-5)


def test_a_model_quantized_by_onnxruntime_pairs_by_names(ort_quantized):
    result = value_errors(FLOAT, ort_quantized, batches(32))
    assert result.pairing == "names" and "equal tensor names" in result.describe()
    assert (len(result.rows), result.float_values) == (16, 23)  # ORT fused Conv+Relu: the Conv outputs are gone
    fused = {row.name: row for row in result.rows}["/features/features.4/body/body.2/Relu_output_0"]
    assert (fused.op, fused.node) == ("Conv", "/features/features.4/body/body.0/Conv")
    assert_matches_reference(result, onnx.load(ort_quantized))


def test_annotated_dump_parses_back_with_the_figures(coarse, coarse_result, tmp_path):
    annotate(coarse, coarse_result)
    path = tmp_path / "annotated.qir"
    path.write_text(ir.print_model(coarse, weights="inline"))
    parsed = {v.name: v for v in ir.parse_file(path).graph.all_values()}
    for row in coarse_result.rows:
        error = parsed[row.name].error
        assert error.sqnr_db == pytest.approx(row.sqnr_db, abs=0.05)
        assert error.added_db == pytest.approx(row.added_db, abs=0.05)


def qc(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_table_and_writes_a_dump_and_json(ort_quantized, tmp_path, capsys):
    dump, report = tmp_path / "debug.qir", tmp_path / "debug.json"
    code, out, err = qc(capsys, "debug", FLOAT, ort_quantized, "--data", INPUTS, "--top", 5,
                        "--dump", dump, "--json", report)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("paired 16 of 23 float activations by equal tensor names")
    assert lines[1].split()[:4] == ["rank", "value", "op", "node"] and len(lines) == 7
    rows = json.loads(report.read_text())["rows"]
    assert len(rows) == 16 and lines[2].split()[1] == rows[0]["value"]
    assert rows[0]["added_db"] == min(row["added_db"] for row in rows)
    parsed = {v.name: v for v in ir.parse_file(dump).graph.all_values()}
    assert parsed[rows[0]["value"]].error.sqnr_db == pytest.approx(rows[0]["sqnr_db"], abs=0.05)
    assert sum(v.error is not None for v in parsed.values()) == 16


def test_cli_data_that_does_not_fit_the_model_is_one_line_and_writes_nothing(ort_quantized, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 3, 16, 16), np.float32))
    code, out, err = qc(capsys, "debug", FLOAT, ort_quantized, "--data", bad, "--dump", tmp_path / "d.qir",
                        "--json", tmp_path / "d.json")
    assert code == 1 and out == ""
    assert err.startswith("qc: error: ") and "[batch,3,32,32]" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_models_with_different_inputs_are_refused():
    with pytest.raises(ir.IRError, match=r"different inputs: float x: float32\['batch', 3, 32, 32\], "
                       r"quantized x: float32\['batch', 64\]"):
        value_errors(FLOAT, GOLDEN.parent / "mlp" / "model.onnx", INPUTS)
