"""The compile driver end to end: every golden case meets its figures, recipes reach the passes,
bad input is refused cleanly, and the report's numbers match independent measurements."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_onnx

import qcompiler
from qcompiler import compiler, ir
from qcompiler.passes import Target

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expected.json").exists())


def compile_case(name: str, **options) -> qcompiler.CompileResult:
    """The case compiled as its expected.json says (its recipe, else the defaults), unless `options` say otherwise."""
    folder = GOLDEN / name
    options.setdefault("recipe", json.loads((folder / "expected.json").read_text()).get("recipe"))
    return qcompiler.compile(folder / "model.onnx", folder / "calib.npz", eval=folder / "inputs.npz", **options)


@pytest.fixture(scope="module")
def compiled() -> dict[str, qcompiler.CompileResult]:
    return {name: compile_case(name) for name in CASES}


def quantized_outputs(result: qcompiler.CompileResult, folder: Path) -> list[np.ndarray]:
    with np.load(folder / "inputs.npz") as inputs:
        return run_onnx(ir.to_onnx(result.model), dict(inputs))


@pytest.mark.parametrize("name", CASES)
def test_golden_case_meets_its_figures(compiled, name):
    folder = GOLDEN / name
    expected = json.loads((folder / "expected.json").read_text())
    result = compiled[name]
    got = quantized_outputs(result, folder)
    with np.load(folder / "outputs.npz") as outputs:
        reference = [outputs[k] for k in outputs.files]
    # the report's SQNR, recomputed here from the stored float outputs with numpy
    for metrics, want, have in zip(result.report.outputs, reference, got, strict=True):
        sqnr = 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want.astype(np.float64) - have) ** 2))
        assert metrics.sqnr_db == pytest.approx(sqnr, abs=0.05)
        assert sqnr >= expected["min_sqnr_db"], f"{name}: SQNR {sqnr:.1f} dB"
        if expected["min_top1_agreement"] is not None:
            agreement = np.mean(want.argmax(-1) == have.argmax(-1))
            assert metrics.top1_agreement == pytest.approx(agreement)
            assert agreement >= expected["min_top1_agreement"]
    if expected["max_accuracy_drop"] is not None:
        with np.load(folder / "labels.npz") as labels:
            accuracy = np.mean(got[0].argmax(-1) == labels["labels"])
        assert accuracy >= expected["float_accuracy"] - expected["max_accuracy_drop"], f"int8 accuracy {accuracy:.3f}"
    if expected["min_integer_flop_share"] is not None:
        assert result.report.kernels.integer_share >= expected["min_integer_flop_share"], result.report.kernels.float_nodes
    assert result.report.qdq_nodes["QuantizeLinear"] > 0 and result.report.size_bytes["quantized"] < result.report.size_bytes["float"]


def test_assign_precision_promotes_exactly_the_layer_reading_outlier_channels(compiled):
    """Plain int8 misses the budget; the mixed pipeline promotes one named Conv and leaves every other unit int8."""
    expected = json.loads((GOLDEN / "outlier_convnet/expected.json").read_text())
    plain = compile_case("outlier_convnet", recipe=None)
    assert plain.report.outputs[0].sqnr_db <= expected["max_int8_sqnr_db"]
    mixed = compiled["outlier_convnet"]
    assert [p["unit"] for p in mixed.report.precision["promoted"]] == expected["promoted"]
    marked = {n.name: n.meta["precision"] for n in mixed.model.graph.nodes if "precision" in n.meta}
    head = next(n for n in mixed.model.graph.nodes if n.name == expected["promoted"][0])
    assert set(marked) == {n.name for n in mixed.model.graph.nodes if n.meta.get("group") == head.meta["group"]}
    assert marked[head.name] in ("w8a16", "fp16", "fp32")
    assert mixed.report.outputs[0].sqnr_db >= expected["min_sqnr_db"] > plain.report.outputs[0].sqnr_db + 10
    convs = [n for n in mixed.model.graph.nodes if n.op_type == "Conv" and n.name not in marked]
    assert len(convs) == 2 and all(n.inputs[1].producer.inputs[0].dtype == ir.DType.INT8 for n in convs)


def test_an_impossible_budget_fails_before_anything_is_written(tmp_path):
    folder = GOLDEN / "outlier_convnet"
    with pytest.raises(qcompiler.passes.PassError, match=r"cannot meet output SQNR >= 90 dB: with every unit but"):
        qcompiler.compile(folder / "model.onnx", folder / "calib.npz", eval=folder / "inputs.npz", pipeline="mixed",
                          recipe={"passes": {"assign-precision": {"min_sqnr_db": 90}}})


def test_report_names_ops_without_rule_and_lists_passes(compiled):
    report = compiled["transformer_block"].report
    assert report.ops_without_rule.get("Div") == 2  # GELU's x / sqrt(2) has no rule: it stays float, and says so
    assert "Erf" not in report.ops_without_rule  # float by its rule, not for want of one
    assert "Shape" not in report.ops_without_rule  # integer shape arithmetic is not a float op left behind
    assert [p.name for p in report.passes] == ["legalize-opset", "freeze-weight-inputs", "apply-overrides",
                                              "canonicalize", "fuse", "insert-observers", "calibrate", "place-qdq",
                                              "fold-weights", "quantize-embeddings", "cleanup"]
    assert report.passes[6].stats["samples"] == 64
    text = report.to_json()
    assert json.loads(text)["pipeline"] == report.pipeline
    assert report.validation_data == "evaluation data"


def test_the_default_pipeline_is_static_int8_but_for_a_transformer_on_ort_cpu():
    folder = GOLDEN / "transformer_block"
    conv = compile_case("resnet_like", recipe=None)
    assert conv.report.settings["pipeline"] == "int8: static, the default" and "fold-weights" in conv.report.pipeline
    encoder = qcompiler.compile(folder / "model.onnx", folder / "calib.npz", eval=folder / "inputs.npz")
    assert encoder.report.settings["pipeline"].startswith("dynamic-smooth")
    assert "smooth-quant{insert_mul=true},dynamic-quant{per_channel=true}" in encoder.report.pipeline
    assert any(line.startswith("  pipeline: dynamic-smooth") for line in encoder.report.summary())
    tensorrt = qcompiler.compile(folder / "model.onnx", folder / "calib.npz", target="tensorrt")  # no dynamic kernels
    assert tensorrt.report.settings["pipeline"] == "int8: static, the default"
    schemes = {row["node"]: row["scheme"] for row in tensorrt.report.linears}
    assert schemes["/features/features.0/attn/q/MatMul"] == "static int8 (per-channel weights)"
    assert schemes["/features/features.0/attn/MatMul"] == "static int8 (two activations)"
    assert "  linears: 13 static int8 (per-channel weights), 4 static int8 (two activations)" in \
        tensorrt.report.summary()


def test_validating_on_calibration_data_is_flagged():
    folder = GOLDEN / "mlp"
    result = qcompiler.compile(folder / "model.onnx", folder / "calib.npz")
    assert result.report.validation_data == "calibration data"
    assert any("validated on the first 64 rows of the calibration data" in w for w in result.report.warnings)
    assert result.report.outputs[0].samples == 64


def test_validation_on_calibration_data_reads_a_bounded_sample(monkeypatch):
    folder = GOLDEN / "mlp"
    calib = np.load(folder / "calib.npz")["x"]  # 64 rows, in feeds of 8
    batches = [{"x": calib[i:i + 8]} for i in range(0, len(calib), 8)]
    monkeypatch.setattr(compiler, "CALIBRATION_CHECK_ROWS", 20)
    result = qcompiler.compile(folder / "model.onnx", batches)
    assert result.report.outputs[0].samples == 24  # whole feeds until 20 rows are read
    assert any("first 24 rows" in w for w in result.report.warnings)
    assert result.report.passes[6].stats["samples"] == 8  # calibration still reads every feed


def test_recipe_reaches_the_passes(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[passes.fold-weights]\nper_channel = false\n\n[overrides]\nexclude = ["/features/features.4/Gemm"]\n')
    model = ir.load_model(GOLDEN / "mlp/model.onnx")
    names = [n.name for n in model.graph.nodes if n.op_type == "Gemm"]
    assert "/features/features.4/Gemm" in names, names
    result = compile_case("mlp", recipe=recipe)
    weight_dqs = [n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear" and n.inputs[0].is_const]
    assert weight_dqs and all("axis" not in n.attributes for n in weight_dqs)  # per tensor, as the recipe says
    excluded = next(n for n in result.model.graph.nodes if n.name == "/features/features.4/Gemm")
    assert excluded.inputs[1].is_const and excluded.inputs[1].dtype == ir.DType.FLOAT  # its weight stays float
    assert "fold-weights{per_channel=false" in result.report.pipeline


def test_an_already_quantized_model_is_refused_or_kept(tmp_path):
    first = compile_case("digits_cnn")
    path = tmp_path / "int8.onnx"
    first.save(path)
    with pytest.raises(ir.IRError, match="already quantized .*on_quantized='keep'"):
        qcompiler.compile(path, GOLDEN / "digits_cnn/calib.npz")
    kept = qcompiler.compile(path, GOLDEN / "digits_cnn/calib.npz", eval=GOLDEN / "digits_cnn/inputs.npz",
                             on_quantized="keep")
    assert kept.report.qdq_nodes == first.report.qdq_nodes  # its pairs keep their parameters; nothing is added
    np.testing.assert_array_equal(quantized_outputs(kept, GOLDEN / "digits_cnn")[0],
                                  quantized_outputs(first, GOLDEN / "digits_cnn")[0])


@pytest.mark.parametrize("opset, ir_version", [(9, 3), (13, 7)])
def test_weights_listed_as_inputs_are_quantized_as_weights(opset, ir_version):
    """Every weight an input with a default, as old exporters write: opset 9 is converted to 13."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir_version
    data = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    result = qcompiler.compile(proto, data)
    assert result.model.opset == 13 and [v.name for v in result.model.graph.inputs] == ["x"]
    assert ("opset" in result.report.settings) == (opset < 13)
    assert any(v.dtype == ir.DType.INT8 for v in result.model.graph.constants)
    assert result.report.kernels.integer_share == 1.0
    assert result.report.outputs[0].sqnr_db > 25


def test_calibration_data_that_does_not_match_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(ir.IRError, match="x"):
        qcompiler.compile(GOLDEN / "digits_cnn/model.onnx", bad)


def test_one_shot_data_is_refused_before_any_work_and_replayable_data_is_read_twice():
    folder = GOLDEN / "mlp"
    with np.load(folder / "calib.npz") as arrays:
        rows = [{name: arrays[name][i:i + 1] for name in arrays.files} for i in range(8)]
    with pytest.raises(ir.IRError, match="one-shot iterator.*a function returning a fresh iterator"):
        qcompiler.compile(folder / "model.onnx", iter(rows))
    result = qcompiler.compile(folder / "model.onnx", lambda: iter(rows))
    assert result.report.outputs[0].samples == 8  # calibrated and validated from the same function


def test_int16_activations_below_opset_21_use_contrib_pairs(compiled):
    """Opset 17 has no 16-bit QuantizeLinear: com.microsoft's pairs carry them, biases still fold to int32."""
    result = compile_case("digits_cnn", recipe={"passes": {"place-qdq": {"activations": "int16"}}})
    pairs = [n for n in result.model.graph.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    activation_pairs = [n for n in pairs if n.op_type == "QuantizeLinear"]
    assert activation_pairs and all(n.domain == "com.microsoft" for n in activation_pairs)
    fold = next(p for p in result.report.passes if p.name == "fold-weights")
    assert fold.stats["biases_folded"] == 3 and "biases_float" not in fold.stats
    assert result.report.outputs[0].sqnr_db > compiled["digits_cnn"].report.outputs[0].sqnr_db


@pytest.mark.parametrize("flags, reduce", [(frozenset({"avx2", "fma"}), True),
                                           (frozenset({"avx2", "avx512_vnni"}), False)])
def test_weight_codes_follow_the_cpu_flags_compiled_for(flags, reduce):
    """Without VNNI, ORT's u8 x s8 kernels saturate full-range weights, so codes stay within [-64, 64]."""
    target = Target.named("ort-cpu", flags=flags, machine="x86_64")
    result = qcompiler.compile(GOLDEN / "mlp" / "model.onnx", GOLDEN / "mlp" / "calib.npz", target=target)
    assert result.report.settings["reduce_range"].startswith("on" if reduce else "off")
    codes = [v.const for v in result.model.graph.constants if v.const is not None and v.const.dtype == np.int8]
    widest = max(int(np.abs(c.astype(np.int32)).max()) for c in codes)
    assert widest == (64 if reduce else 127)


def test_a_transformer_exported_below_opset_17_is_found_for_the_default(tmp_path):
    """torch writes LayerNorm out (ReduceMean, Sub, Pow, ...) below opset 17: fuse groups it, and the
    default sees the transformer there too; a conv net with a LayerNorm-fed head stays static."""
    import torch
    from encoder_model import build_encoder, token_batches

    encoder, calib = build_encoder(), token_batches(8, 1, seq=16)
    old = tmp_path / "encoder14.onnx"
    torch.onnx.export(encoder, (torch.from_numpy(calib[0]["input_ids"]),), str(old), opset_version=14,
                      input_names=["input_ids"], dynamic_axes={"input_ids": {0: "batch", 1: "seq"}}, dynamo=False)
    ops = {n.op_type for n in onnx.load(old).graph.node}
    assert "LayerNormalization" not in ops and "ReduceMean" in ops
    result = qcompiler.compile(old, calib, eval=calib)
    assert result.report.settings["pipeline"].startswith("dynamic-smooth")
    assert result.report.outputs[0].sqnr_db > 25

    class ConvWithAttentionHead(torch.nn.Module):  # an OCR recognizer's shape: a conv backbone, a small head
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                                                torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU())
            self.norm, self.head = torch.nn.LayerNorm(64), torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.backbone(x).mean(dim=(2, 3))))

    with torch.no_grad():
        images = np.random.default_rng(0).random((4, 1, 3, 8, 8), np.float32)
        conv = qcompiler.compile(ConvWithAttentionHead().eval(), [{"x": image} for image in images],
                                 example_inputs=(torch.zeros(1, 3, 8, 8),))
    assert conv.report.settings["pipeline"] == "int8: static, the default"
