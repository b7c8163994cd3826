"""tools/encoder_standins.py: the tiny stand-in's exported graph, measured in ONNX Runtime, has what it promises."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import encoder_standins as standins  # noqa: E402


def test_tiny_standin_carries_trained_encoder_activations(tmp_path):
    case = standins.prepare("tiny", tmp_path, 4, 8)
    with np.load(case.eval) as data:
        feeds = {k: data[k] for k in data.files}
    figures = standins.measure(case.model, feeds, standins.SIZES["tiny"].massive_from)
    assert figures["massive_min_ratio"] >= 50 and figures["massive_max_ratio"] <= 200, figures
    assert 1 <= figures["massive_channels"] <= 3
    assert figures["sink_head_share"] >= 0.5 and figures["gelu_tail_ratio"] >= 5
    assert standins.check(figures) == []

    model = onnx.load(str(case.model))
    ops = {node.op_type for node in model.graph.node}
    assert {"LayerNormalization", "Erf", "Softmax", "Cast", "Sub", "Unsqueeze", "Shape", "Slice"} <= ops
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims == {name: ["batch", "sequence"] for name in standins.INPUTS}
    mask = feeds["attention_mask"]
    assert mask[:, 0].all() and not mask.all() and (feeds["input_ids"][:, 0] == standins.CLS).all()
    lengths = mask.sum(axis=1)
    assert (feeds["input_ids"][np.arange(len(lengths)), lengths - 1] == standins.SEP).all()
