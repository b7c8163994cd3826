"""tools/bench.py on a tiny MobileNetV2: every column is printed, and its SQNR figures match numpy's."""

from __future__ import annotations

import json
import math
import re
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from qcompiler.ir.evaluate import open_session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import bench  # noqa: E402


def _table(out: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header cells and each row's cells (split on runs of 2+ spaces) of the one table printed."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tool "))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = {}
    for line in lines[start + 1:]:
        if not line or line.startswith(" "):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return header, rows


def _numpy_sqnr(float_model: Path, quant_model: Path, evaluate: Path) -> float:
    """SQNR of the whole evaluation set in one batch, from the definition."""
    with np.load(evaluate) as data:
        feeds = dict(data)
    ref = open_session(float_model).run(None, feeds)[0]
    got = open_session(quant_model).run(None, feeds)[0]
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return 10 * math.log10((ref**2).sum() / ((ref - got) ** 2).sum())


def test_bench_prints_every_column_and_right_sqnr(tmp_path, capsys):
    tools = ["qcompiler", "ort", *(["nncf"] if find_spec("nncf") else [])]
    bench.main(["--quick", "--resolution", "32", "--models", "mobilenetv2", "--tools", *tools, "--samples", "4",
                "--eval-samples", "3", "--repeat", "1", "--work-dir", str(tmp_path), "--json",
                str(tmp_path / "bench.json")])
    header, rows = _table(capsys.readouterr().out)
    assert header == list(bench.COLUMNS)
    assert list(rows) == ["float", *tools]
    report = json.loads((tmp_path / "bench.json").read_text())["models"]["mobilenetv2"]
    for tool in tools:
        cells = rows[tool]
        assert len(cells) == len(bench.COLUMNS), cells
        compile_s, peak, idle, sqnr, lat1, lat2 = (float(c) for c in cells[1:7])
        assert compile_s > 0 and peak >= idle > 0 and lat1 > 0 and lat2 > 0
        assert 0 <= float(cells[7].rstrip("%")) <= 100
        quantized = Path(report["tools"][tool]["model"])
        expected = _numpy_sqnr(Path(report["model"]), quantized, quantized.parent / "eval-3.npz")
        assert abs(sqnr - expected) < 0.02, (tool, sqnr, expected)


def test_missing_nncf_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_importable", lambda module: False)
    assert bench.quantize("nncf", tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "e.npz",
                          tmp_path / "q.onnx", False) == {"error": "nncf: not installed"}


def _pixel_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    true_positive = np.sum(predicted & truth)
    return 2 * true_positive / (2 * true_positive + np.sum(predicted & ~truth) + np.sum(~predicted & truth))


def test_conv_standin_table_has_task_figures_numpy_agrees_with(tmp_path, capsys):
    tools = ["ort-percentile", "qcompiler-auto"]
    bench.main(["--quick", "--models", "db-detector", "--tools", *tools, "--samples", "4", "--eval-samples", "3",
                "--repeat", "1", "--work-dir", str(tmp_path), "--json", str(tmp_path / "bench.json")])
    out = capsys.readouterr().out
    header, rows = _table(out)
    assert header == list(bench.CONV_COLUMNS) and list(rows) == ["float", *tools]
    report = json.loads((tmp_path / "bench.json").read_text())["models"]["db-detector"]
    assert re.search(r"qcompiler-auto: kept [a-z-]+, of dynamic, static", out)
    folder = Path(report["model"]).parent
    with np.load(folder / "eval-3.npz") as data, np.load(folder / "labels-3.npz") as labels:
        feeds, truth = dict(data), labels["labels"] > 0.5
    want = open_session(Path(report["model"])).run(None, feeds)[0] > 0.5
    float_task = float(rows["float"][6])
    assert abs(float_task - 100 * _pixel_f1(want, truth)) < 0.051
    for tool in tools:
        quantized = Path(report["tools"][tool]["model"])
        got = open_session(quantized).run(None, feeds)[0] > 0.5
        vs_float, task, points = (float(c) for c in rows[tool][5:8])
        assert abs(vs_float - 100 * _pixel_f1(got, want)) < 0.051
        assert abs(task - 100 * _pixel_f1(got, truth)) < 0.051 and abs(points - (float_task - task)) < 0.11
        mb, ratio = float(rows[tool][8]), float(rows[tool][9])
        size = quantized.stat().st_size
        assert abs(mb - size / 2**20) < 0.0051 and abs(ratio - size / Path(report["model"]).stat().st_size) < 0.0051
