"""The observations store shared by compiles of one model on one data set (auto's rungs).

References: the same passes run without a store (a fresh pass over the data), so a reused
or companion-fed observer must give exactly the ranges a pass of its own gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcompiler import ir
from qcompiler.auto import auto
from qcompiler.compiler import compile
from qcompiler.data import input_specs, open_calibration_data
from qcompiler.ir.evaluate import main_values
from qcompiler.passes import PassContext, PassManager
from qcompiler.passes.analyses.observers import ObserverOptions, Observations

DIGITS = Path(__file__).resolve().parent.parent / "golden" / "digits_cnn"
CALIBRATE = "canonicalize,fuse,insert-observers{OPTIONS},calibrate"
PERCENTILE = {"method": "percentile", "percentile": 99.9}


def calibrated(store: Observations | None, options: dict | None = None, data=None) -> dict[str, tuple]:
    """Each observed value's range after calibrating the digits CNN with `options` for insert-observers."""
    model = ir.load_model(DIGITS / "model.onnx")
    data = data if data is not None else open_calibration_data(DIGITS / "calib.npz", input_specs(model))
    text = "{" + ",".join(f"{k}={v}" for k, v in (options or {}).items()) + "}" if options else ""
    PassManager(CALIBRATE.replace("{OPTIONS}", text)).run(model, PassContext(calibration_data=data, observations=store))
    return {v.name: v.observed_range for v in main_values(model) if "observer" in v.meta}


def test_a_second_calibration_of_the_same_model_and_data_reuses_the_first():
    store = Observations()
    first, again = calibrated(store), calibrated(store)
    assert (store.passes, store.reused) == (1, 1)
    assert again == first == calibrated(None)
    assert len(first) == 4 and all(lo < hi for lo, hi in first.values())


def test_a_companion_fed_beside_minmax_equals_a_pass_of_its_own():
    store = Observations({ObserverOptions().spec(): (ObserverOptions(**PERCENTILE).spec(),)})
    minmax = calibrated(store)
    percentile = calibrated(store, PERCENTILE)
    assert (store.passes, store.reused) == (1, 1)  # the percentile ask came out of the min-max pass
    assert percentile == calibrated(None, PERCENTILE)  # histograms are exact: the same counts, the same ranges
    assert minmax == calibrated(None)
    assert any(percentile[name] != minmax[name] for name in minmax)  # they are different observers


def test_another_computation_or_data_without_a_fingerprint_is_measured_again():
    store = Observations()
    calibrated(store)
    model = ir.load_model(DIGITS / "model.onnx")
    digest = ir.computation_digest(model)
    next(iter(model.graph.nodes)).meta["note"] = "only an annotation"
    assert ir.computation_digest(model) == digest
    weight = next(v for v in model.graph.constants if v.const.size > 16)
    weight.const = weight.const * np.float32(2)
    assert ir.computation_digest(model) != digest

    rows = np.load(DIGITS / "calib.npz")
    name = next(iter(rows.files))
    feeds = [{name: rows[name][i:i + 1]} for i in range(8)]  # a plain list: no fingerprint
    calibrated(store, data=feeds)
    calibrated(store, data=feeds)
    assert (store.passes, store.reused) == (1, 0)


def test_auto_calibrates_once_and_measures_as_separate_compiles_would():
    data = {"calib": DIGITS / "calib.npz", "eval": DIGITS / "inputs.npz"}
    result = auto(DIGITS / "model.onnx", data["calib"], eval=data["eval"], tolerance=2.0)
    by_rung = {a.rung: a for a in result.attempts}
    stats = {rung: {p.name: p.stats for p in by_rung[rung].result.report.passes}["calibrate"]
             for rung in ("static", "static-percentile")}
    assert stats["static"]["samples"] > 0 and not stats["static"].get("reused")
    assert stats["static-percentile"]["reused"] == 1  # fed in the static rung's pass over the data
    alone = compile(DIGITS / "model.onnx", data["calib"], eval=data["eval"], pipeline="int8",
                    recipe={"passes": {"insert-observers": {"method": "percentile", "percentile": 99.99}}})
    shared = by_rung["static-percentile"].result.report
    assert [m.sqnr_db for m in shared.outputs] == [m.sqnr_db for m in alone.report.outputs]
