"""Dims as exporters write them: -1 and 0 values and placeholder names are each a dynamic dim of their own."""

from __future__ import annotations

import numpy as np
import pytest
from exporter_models import paddle_style_classifier
from helpers import run_onnx

import qcompiler
from qcompiler import ir
from qcompiler.data import input_specs, open_calibration_data


def images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, height, width)).astype(np.float32)


@pytest.mark.parametrize("dims", [[-1, 3, -1, -1], [0, 3, 0, 0], ["?", 3, "?", "?"], ["-1", 3, "-1", "-1"]])
def test_each_dynamic_dim_stands_alone(dims):
    model = ir.load_model(paddle_style_classifier(dims))
    assert model.graph.inputs[0].type.shape == (None, 3, None, None)
    assert model.graph.outputs[0].type.shape[1] == 2


def test_a_paddle_style_model_compiles_on_samples_of_two_spatial_sizes(tmp_path):
    proto = paddle_style_classifier([-1, 3, -1, -1])
    folder = tmp_path / "calib"
    folder.mkdir()
    for index in range(32):  # text-line crops: 48 high, two widths
        width = 192 if index % 2 else 160
        np.savez(folder / f"{index:03d}.npz", x=images(1, 48, width, seed=index))
    held_out = [{"x": images(1, 48, width, seed=100 + i)} for i, width in enumerate([192, 160, 128, 192])]

    result = qcompiler.compile(proto.SerializeToString(), folder, eval=held_out)

    assert result.report.settings["opset"].startswith("11 -> 13")
    quantized = ir.to_onnx(result.model)
    written = quantized.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in written] == [None, 3, None, None]
    ops = {node.op_type for node in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for feed in held_out:  # runs at every width, and stays close to the float model
        (want,), (got,) = run_onnx(proto, feed), run_onnx(quantized, feed)
        assert got.shape == want.shape == (1, 2) and np.abs(got - want).max() < 0.05
    (output,) = result.report.outputs
    assert output.sqnr_db > 20


def test_rows_of_unnamed_dims_are_not_tied_to_each_other():
    model = ir.load_model(paddle_style_classifier(["?", 3, "?", "?"]))
    data = open_calibration_data({"x": images(4, 48, 192, seed=0)}, input_specs(model))
    assert [feed["x"].shape for feed in data] == [(1, 3, 48, 192)] * 4
