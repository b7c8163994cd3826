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
