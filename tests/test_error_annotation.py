"""Per-value error statistics (`Value.error`) in the text form and beside ONNX export.

A dump shows them after a value's range as `err<sqnr=..dB, added=..dB, cos=.., max=..>`,
rounded for reading; the printed text parses back and prints the same. Export leaves them
out: an annotated quantized model exports to the same bytes and runs the same in ONNX
Runtime, and the figures read back from its dump match numpy's measurement of the
quantized model against the float one.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_outputs, run_onnx, through_text
from test_text_property import assert_same_error

from qcompiler import ir, passes
from qcompiler.data import input_specs, open_calibration_data

GOLDEN = Path(__file__).parent.parent / "golden" / "conv_relu"
PIPELINE = "canonicalize,fuse,insert-observers,calibrate,place-qdq,fold-weights{reduce_range=true},cleanup"

ANNOTATED = """model ir_version=10 opset{ai.onnx=21}
graph @g(%x: f32[1,4,8,8] range=[-1.0, 1.0] err<sqnr=48.1dB, added=48.1dB, cos=0.99999, max=0.00391>) {
  %c: f32[1,4,8,8] range=[0.0, 5.8] err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312> = Relu(%x)
  return %c
}
"""
SPEC_LINE = "%c: f32[1,4,8,8] range=[0.0, 5.8] err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312> = Relu(%x)"


def _relu_model(stats: ir.ErrorStats | None) -> ir.Model:
    graph = ir.Graph("g")
    x = graph.add_input(ir.Value("x", ir.TensorType(ir.DType.FLOAT, (1, 4, 8, 8))))
    (c,) = graph.append(ir.Node("Relu", [x], [ir.Value("c")])).outputs
    c.type, c.observed_range, c.error = x.type, (0.0, 5.8), stats
    graph.set_outputs([c])
    return ir.Model(graph, {"": 21})


def _measure(reference: np.ndarray, actual: np.ndarray) -> ir.ErrorStats:
    """SQNR, cosine and largest error of `actual` against `reference`, in float64."""
    reference, noise = reference.astype(np.float64).ravel(), (actual.astype(np.float64) - reference).ravel()
    sqnr = 10 * math.log10(np.dot(reference, reference) / np.dot(noise, noise))
    cosine = np.dot(reference, actual.ravel()) / (np.linalg.norm(reference) * np.linalg.norm(actual))
    return ir.ErrorStats(sqnr, math.nan, cosine, np.abs(noise).max())


# -- the record -------------------------------------------------------------------------


def test_error_stats_hold_plain_floats_and_are_frozen():
    stats = ir.ErrorStats(np.float32(31.25), np.float64(-3.5), np.float32(0.5), np.float32(0.125))
    assert stats == ir.ErrorStats(31.25, -3.5, 0.5, 0.125)
    assert all(type(getattr(stats, f.name)) is float for f in dataclasses.fields(stats))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.cosine = 1.0  # type: ignore[misc]


def test_error_stats_accept_what_a_comparison_can_yield():
    nothing = ir.ErrorStats(math.nan, math.nan, math.nan, math.nan)
    assert all(math.isnan(getattr(nothing, f.name)) for f in dataclasses.fields(nothing))
    exact = ir.ErrorStats(math.inf, math.inf, 1.0, 0.0)
    assert (exact.sqnr_db, exact.max_abs_error) == (math.inf, 0.0)
    assert ir.ErrorStats(-math.inf, -math.inf, -1.0, math.inf).sqnr_db == -math.inf


@pytest.mark.parametrize("cosine, kept", [(1 + 1e-7, 1.0), (-1 - 3e-6, -1.0), (np.float32(1.0000001), 1.0)])
def test_a_cosine_rounded_past_one_is_clamped(cosine, kept):
    assert ir.ErrorStats(0.0, 0.0, cosine, 0.0).cosine == kept


@pytest.mark.parametrize("fields, message", [
    ((0.0, 0.0, 1.01, 0.0), "cosine 1.01 is outside [-1, 1]"),
    ((0.0, 0.0, -1.5, 0.0), "cosine -1.5 is outside [-1, 1]"),
    ((0.0, 0.0, 1.0, -0.5), "max_abs_error -0.5 is negative"),
    ((0.0, 0.0, 1.0, -math.inf), "max_abs_error -inf is negative"),
])
def test_error_stats_refuse_impossible_figures(fields, message):
    with pytest.raises(ValueError) as info:
        ir.ErrorStats(*fields)
    assert str(info.value) == message


# -- printing and parsing -----------------------------------------------------------------


def test_dump_shows_the_error_after_the_range():
    text = ir.print_model(_relu_model(ir.ErrorStats(31.2345, 34.87, 0.9995731, 0.031181)))
    assert f"  {SPEC_LINE}\n" in text
    assert "err<" not in ir.print_model(_relu_model(None))


def test_parsed_dump_prints_the_same_and_holds_the_printed_figures():
    model = ir.parse_model(ANNOTATED)
    assert ir.print_model(model) == ANNOTATED
    (x,), (c,) = model.graph.inputs, model.graph.outputs
    assert x.error == ir.ErrorStats(48.1, 48.1, 0.99999, 0.00391)
    assert c.error == ir.ErrorStats(31.2, 34.9, 0.99957, 0.0312)
    assert c.observed_range == (0.0, np.float32(5.8))


@pytest.mark.parametrize("stats, printed", [
    ((31.2345, 34.87, 0.9995731, 0.031181), "err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312>"),
    ((-0.04, 120.0, -0.0000041, 123456.0), "err<sqnr=0.0dB, added=120.0dB, cos=0.0, max=123000.0>"),
    ((1e300, -7.96, -1.0, 5e-324), "err<sqnr=1e+300dB, added=-8.0dB, cos=-1.0, max=5e-324>"),
    ((0.0, 0.0, 0.0, 1.7975e308), "err<sqnr=0.0dB, added=0.0dB, cos=0.0, max=1.7975e+308>"),
    ((0.05, 9.95, 0.999995, 9.995), "err<sqnr=0.1dB, added=9.9dB, cos=0.99999, max=9.99>"),
    ((math.inf, -math.inf, math.nan, math.inf), "err<sqnr=inf, added=-inf, cos=nan, max=inf>"),
    ((math.nan, math.nan, math.nan, math.nan), "err<sqnr=nan, added=nan, cos=nan, max=nan>"),
], ids=["plain", "negative-zero", "extremes", "near-overflow", "halfway", "infinite", "nothing-compared"])
def test_figures_print_rounded_and_read_back_to_the_same_text(stats, printed):
    """Non-finite figures print bare, as float data does; finite decibels carry the unit."""
    original = ir.ErrorStats(*stats)
    text = ir.print_model(_relu_model(original))
    assert f"range=[0.0, 5.8] {printed} = Relu" in text
    parsed = ir.parse_model(text)
    assert ir.print_model(parsed) == text
    assert_same_error(original, parsed.graph.outputs[0].error)


def test_hand_written_figures_read_back_in_printed_form():
    """The unit is optional on decibels, numbers take any spelling, comments may sit inside."""
    written = ANNOTATED.replace(
        "err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312>",
        "err< sqnr = 31.2, // measured\n added=infdB,cos=1,max=1e-5 >",
    )
    assert ir.print_model(ir.parse_model(written)) == ANNOTATED.replace(
        "err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312>", "err<sqnr=31.2dB, added=inf, cos=1.0, max=1e-05>"
    )


# Columns on line 3 of ANNOTATED: %c at 3, err at 37, sqnr at 41, added at 54, cos at 68, max at 81
_ERR = "err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312>"


@pytest.mark.parametrize("err, message", [
    ("err<sqnr=31.2dB, added=34.9dB, cos=0.99957>",
     "3:37: err<...> lacks max; err<...> takes sqnr, added, cos, max in this order"),
    ("err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312, p99=0.01>",
     "3:93: unknown error field 'p99'; err<...> takes sqnr, added, cos, max in this order"),
    ("err<sqnr=31.2dB, cos=0.99957, added=34.9dB, max=0.0312>",
     "3:54: error field 'cos' out of place; err<...> takes sqnr, added, cos, max in this order"),
    ("err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=0.0312, max=0.0312>",
     "3:93: error field 'max' out of place; err<...> takes sqnr, added, cos, max in this order"),
    ("err<sqnr=31.2dB, added=34.9dB, cos=0.99957dB, max=0.0312>", "3:72: cos takes no unit"),
    ("err<sqnr=high, added=34.9dB, cos=0.99957, max=0.0312>", "3:46: unexpected 'high'; expected one of: number"),
    ("err<sqnr=31.2 dB, added=34.9dB, cos=0.99957, max=0.0312>", "3:51: unexpected 'dB'; expected one of: ',', '>'"),
    ("err<sqnr=31.2dB, added=34.9dB, cos=1.5, max=0.0312>", "3:37: err<...>: cosine 1.5 is outside [-1, 1]"),
    ("err<sqnr=31.2dB, added=34.9dB, cos=0.99957, max=-0.0312>", "3:37: err<...>: max_abs_error -0.0312 is negative"),
    ("err<>", "3:41: unexpected '>'; expected one of: identifier"),
], ids=["missing", "unknown", "order", "twice", "unit", "number", "spaced-unit", "cosine", "negative", "empty"])
def test_malformed_err_points_at_the_token(err, message):
    with pytest.raises(ir.ParseError) as info:
        ir.parse_model(ANNOTATED.replace(_ERR, err))
    assert str(info.value) == f"<text>:{message}"


def test_err_sits_between_range_and_meta_only():
    """Fixed order on the line, as printed; constants carry no error."""
    after_meta = ANNOTATED.replace(f"{_ERR} = Relu", f'meta{{a=1}} {_ERR} = Relu')
    with pytest.raises(ir.ParseError, match="3:47: unexpected 'err'"):
        ir.parse_model(after_meta)
    model = ir.parse_model(ANNOTATED.replace(f"{_ERR} = Relu", f'{_ERR} meta{{a=1}} = Relu'))
    assert model.graph.outputs[0].meta == {"a": 1} and model.graph.outputs[0].error is not None
    on_const = ANNOTATED.replace("  return %c", f"  const %w: f32[1] {_ERR} = [1.0]\n  return %c")
    with pytest.raises(ir.ParseError, match="4:20: unexpected 'err'; expected one of: '=', 'q'$"):
        ir.parse_model(on_const)


# -- ONNX export ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized() -> tuple[ir.Model, dict[str, np.ndarray]]:
    model = ir.load_model(GOLDEN / "model.onnx")
    data = open_calibration_data(GOLDEN / "inputs.npz", input_specs(model))
    passes.PassManager(PIPELINE).run(model, passes.PassContext(calibration_data=data))
    return model, dict(np.load(GOLDEN / "inputs.npz"))


def test_annotated_dump_exports_and_runs_like_the_unannotated_model(quantized):
    model, feeds = quantized
    plain = ir.to_onnx(model)
    (float_out,) = run_onnx(str(GOLDEN / "model.onnx"), feeds)
    (quant_out,) = run_onnx(plain, feeds)
    measured = _measure(float_out, quant_out)
    assert 15 < measured.sqnr_db < 60 and 0.99 < measured.cosine <= 1.0  # a real, imperfect quantization

    text, annotated = through_text(model)  # a copy to annotate
    assert "err<" not in text
    values = [v for v in annotated.graph.all_values() if not v.is_const]
    for value in values:
        value.error = ir.ErrorStats(math.inf, math.nan, 1.0, 0.0)
    annotated.graph.outputs[0].error = measured
    assert ir.to_onnx(annotated).SerializeToString() == plain.SerializeToString()

    text, parsed = through_text(annotated)
    ir.verify_model(parsed)
    assert text.count(" err<") == len(values) > 20
    (output,) = parsed.graph.outputs
    assert_same_error(measured, output.error)
    exported = ir.to_onnx(parsed)
    assert exported.SerializeToString() == plain.SerializeToString()
    (reparsed_out,) = run_onnx(exported, feeds)
    assert_same_outputs([quant_out], [reparsed_out])
    assert_same_error(_measure(float_out, reparsed_out), output.error)
