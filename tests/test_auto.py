"""--auto: the ladder is walked, each rung measured, and the choice explained; nothing good enough keeps float."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_model import build_encoder, token_batches
from helpers import run_onnx

from qcompiler import ir
from qcompiler.auto import (SEARCH_RUNGS, AutoError, Attempt, Rung, auto, bounded, duration_text, estimate_seconds,
                            parse_duration, save_auto)
from qcompiler.cli import main

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
DIGITS = GOLDEN / "digits_cnn"


def test_conv_net_and_encoder_choose_different_rungs():
    conv = auto(DIGITS / "model.onnx", DIGITS / "calib.npz", eval=DIGITS / "inputs.npz", tolerance=2.0)
    assert conv.chosen is not None and conv.chosen.meets
    assert [a.rung for a in conv.attempts][:3] == ["dynamic", "static", "static-percentile"]
    assert not {"static-smooth", "dynamic-smooth"} & {a.rung for a in conv.attempts}  # no LayerNorm feeds a Linear
    assert conv.chosen.verdict.startswith("kept: the fastest that meets the tolerance")
    assert conv.notes == []  # 600 evaluation rows resolve 2%

    module = build_encoder()
    dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}}
    calib, held_out = token_batches(32, 1, lengths=(16, 48)), token_batches(8, 2, lengths=(16, 48))
    encoder = auto(module, calib, eval=held_out, tolerance=0.1, example_inputs=(torch.from_numpy(
        calib[0]["input_ids"]),), dynamic_shapes=dims)
    by_rung = {a.rung: a for a in encoder.attempts}
    # hidden states are judged by the cosine of each token's vector; per-tensor scales over the
    # outlier channels keep plain static below 0.999, smooth-quant above it
    assert not by_rung["static"].meets and "mean cosine of last-axis vectors" in by_rung["static"].verdict
    assert by_rung["static-smooth"].meets and by_rung["dynamic-smooth"].meets and not by_rung["dynamic"].meets
    assert encoder.chosen is not None and encoder.chosen.rung != conv.chosen.rung
    text = "\n".join(encoder.summary())
    assert "tolerance 0.1% (mean cosine of last-axis vectors >= 0.999)" in text and f"chose {encoder.chosen.rung}" in text


def test_an_impossible_tolerance_keeps_the_float_model(tmp_path):
    unet = GOLDEN / "unet_like"
    result = auto(unet / "model.onnx", unet / "calib.npz", eval=unet / "inputs.npz", tolerance=1e-9)
    assert result.chosen is None
    assert all(not a.meets for a in result.attempts)
    assert "kept the float model" in "\n".join(result.summary())
    path = tmp_path / "kept.onnx"
    save_auto(result, path)
    assert not any(n.op_type.endswith("QuantizeLinear") for n in ir.load_model(path).graph.nodes)
    with pytest.raises(AutoError, match="no rung met the tolerance"):
        auto(unet / "model.onnx", unet / "calib.npz", eval=unet / "inputs.npz", tolerance=1e-9, require=True)


def test_too_few_evaluation_rows_for_the_tolerance_are_said():
    """32 rows judged by top-1 agreement: one flip is 3.1%, so 2% asks for no flip at all."""
    with np.load(DIGITS / "inputs.npz") as data:
        rows = {"x": data["x"][:32]}
    result = auto(DIGITS / "model.onnx", DIGITS / "calib.npz", eval=rows, tolerance=2.0)
    note = ("logits: top-1 agreement over 32 rows, so one disagreement (3.1%) is over the 2% tolerance; "
            "50 evaluation rows would allow one")
    assert result.notes == [note] and f"  note: {note}" in result.summary()


def test_a_metric_function_judges_by_its_own_units(tmp_path):
    metric = tmp_path / "accuracy.py"
    metric.write_text("import numpy as np\n"
                      f"LABELS = np.load({str(DIGITS / 'labels.npz')!r})['labels']\n"
                      "def accuracy(outputs):\n"
                      "    return float(np.mean(outputs['logits'].argmax(1) == LABELS))\n")
    result = auto(DIGITS / "model.onnx", DIGITS / "calib.npz", eval=DIGITS / "inputs.npz", tolerance=0.01,
                  metric=f"{metric}:accuracy")
    assert result.tolerance.startswith("0.01 below the float model's metric 0.97")
    assert result.chosen is not None
    (logits,) = run_onnx(ir.to_onnx(result.model), {"x": np.load(DIGITS / "inputs.npz")["x"]})
    accuracy = float(np.mean(logits.argmax(1) == np.load(DIGITS / "labels.npz")["labels"]))
    assert accuracy >= 0.97 - 0.01
    assert result.chosen.accuracy.startswith(f"metric {accuracy:.4g}")
    assert result.chosen.metric == pytest.approx(accuracy, abs=1e-12)


def test_cli_auto_exit_codes_and_report(tmp_path):
    unet = GOLDEN / "unet_like"
    common = ["compile", str(unet / "model.onnx"), "--calib", str(unet / "calib.npz"), "--eval", str(unet / "inputs.npz"),
              "--auto", "-o", str(tmp_path / "out.onnx")]
    assert main([*common, "--tolerance", "1e-9", "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["chosen"] is None and report["attempts"][0]["rung"] == "dynamic"
    assert (tmp_path / "out.onnx").exists()
    (tmp_path / "out.onnx").unlink()
    assert main([*common, "--tolerance", "1e-9", "--require"]) == 1
    assert not (tmp_path / "out.onnx").exists()
    assert main([*common, "--pipeline", "int8"]) == 2


def test_a_spent_time_budget_skips_the_rungs_left_and_keeps_the_best_so_far():
    mlp = GOLDEN / "mlp"
    result = auto(mlp / "model.onnx", mlp / "calib.npz", eval=mlp / "inputs.npz", tolerance=5.0, time_budget_s=1e-3)
    first, *rest = result.attempts
    assert first.rung == "dynamic" and first.result is not None  # the first rung always runs
    assert rest and all(a.verdict.startswith("skipped: over the time budget: estimated") for a in rest)
    assert result.chosen is (first if first.meets else None)
    text = "\n".join(result.summary())
    assert "the time budget ran out: the best rung tried is kept" in text and "of a 0.0 s time budget" in text


def test_rung_estimates_follow_what_the_rungs_before_them_took():
    def ran(rung, seconds, compile_seconds):
        return Attempt(rung, rung, seconds=seconds, compile_seconds=compile_seconds, result=object())

    attempts = [ran("dynamic", 3.0, 1.0), ran("static", 5.0, 2.0), ran("static-percentile", 6.0, 2.5)]
    assert estimate_seconds(Rung("static-smooth", "int8-smooth"), attempts, 10) == 6.0
    assert estimate_seconds(Rung("dynamic-smooth", "dynamic-smooth"), attempts, 10) == 3.0
    # a mixed rung: the slowest static attempt, then two validations per compute op
    assert estimate_seconds(Rung("mixed", "mixed"), attempts, 10) == pytest.approx(6.0 + 2 * 10 * 3.5)
    assert estimate_seconds(Rung("mixed", "mixed"), attempts[:1], 10) is None  # no static rung to go by


def test_durations_read_and_print_as_people_write_them():
    assert [parse_duration(t) for t in ("10m", "90s", "1h30m", "45", "2.5m")] == [600, 90, 5400, 45, 150]
    assert [duration_text(s) for s in (0.25, 42, 185, 3720)] == ["0.2 s", "42 s", "3m05s", "1h02m"]
    for bad in ("", "10x", "0", "-5"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_cli_refuses_an_unreadable_time_budget(tmp_path, capsys):
    mlp = GOLDEN / "mlp"
    code = main(["compile", str(mlp / "model.onnx"), "--calib", str(mlp / "calib.npz"), "--auto",
                 "--time-budget", "ten minutes", "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["qc: error: --time-budget: cannot read 'ten minutes' as a duration: write e.g. "
                                 "10m, 90s, 1h30m or a number of seconds"]
    assert not (tmp_path / "out.onnx").exists()


def test_a_conv_net_with_spread_channels_is_rescued_by_the_equalized_rung():
    case = GOLDEN / "outlier_convnet"
    result = auto(case / "model.onnx", case / "calib.npz", eval=case / "inputs.npz", tolerance=20.0)
    by_rung = {a.rung: a for a in result.attempts}
    assert not by_rung["static"].meets and not by_rung["static-percentile"].meets
    assert result.chosen is by_rung["static-equalized"]  # measured: top-1 agreement 90.6% against 37.5% static
    assert "equalize" in result.chosen.pipeline and "bias-correct" in result.chosen.pipeline


def test_a_searching_rung_gets_a_quarter_of_the_time_left_after_one_static_compile():
    attempts = [Attempt("static", "int8", seconds=8.0, compile_seconds=3.0, result=object())]
    rung = bounded(SEARCH_RUNGS[1], attempts, left=108.0)
    assert rung.passes == {"adaround": {"time_budget_s": 25.0}}  # (108 - 8) / 4
    assert estimate_seconds(rung, attempts, 10) == 33.0
    assert bounded(SEARCH_RUNGS[0], attempts, left=4000.0).passes["choose-ranges"]["time_budget_s"] == 300.0
    assert bounded(Rung("static", "int8"), attempts, left=10.0) == Rung("static", "int8")


def test_searching_rungs_run_only_when_asked_and_the_cheap_rungs_fall_short():
    unet = GOLDEN / "unet_like"
    result = auto(unet / "model.onnx", unet / "calib.npz", eval=unet / "inputs.npz", tolerance=1e-9,
                  time_budget_s=40, search=True)
    names = [a.rung for a in result.attempts]
    assert names[names.index("static-equalized") + 1:][:2] == ["static-ranges", "static-adaround"]
    for attempt in result.attempts[names.index("static-ranges"):][:2]:
        budget = float(re.search(r"time_budget_s=([0-9.]+)", attempt.pipeline).group(1))
        assert 0 < budget <= 10.0 and attempt.result is not None
    meets = auto(DIGITS / "model.onnx", DIGITS / "calib.npz", eval=DIGITS / "inputs.npz", tolerance=2.0, search=True)
    assert not {"static-ranges", "static-adaround"} & {a.rung for a in meets.attempts}
