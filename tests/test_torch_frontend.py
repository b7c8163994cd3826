"""The PyTorch front end: compile(module) equals compile(its ONNX export), and names are the user's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from encoder_model import build_encoder, token_batches
from helpers import run_onnx
from torch_models import build_module

import qcompiler
from qcompiler import ir
from qcompiler.ir.evaluate import sqnr_db
from qcompiler.recipe import Recipe
from qcompiler.torch import ExportError, export


def _image_batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 3, 16, 16), dtype=np.float32)} for _ in range(count)]


def _outputs(result, feeds) -> list[np.ndarray]:
    proto = ir.to_onnx(result.model)
    return [run_onnx(proto, feed)[0] for feed in feeds]


@pytest.fixture(scope="module")
def small_encoder():
    """Two layers are enough for names and shapes; the six-layer model is for accuracy."""
    module = build_encoder(layers=2, hidden=64, ffn=128)
    dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}}
    example = (torch.from_numpy(token_batches(1, 0)[0]["input_ids"]),)
    return module, example, dims


def test_conv_net_from_module_equals_its_onnx_export(tmp_path):
    module, example = build_module("conv_bn_pool")
    calib, held_out = _image_batches(16, 1), _image_batches(4, 2)
    path = tmp_path / "convnet.onnx"
    torch.onnx.export(module, example, str(path), dynamo=True, input_names=["x"], verbose=False).save(str(path))

    from_module = qcompiler.compile(module, calib, eval=held_out, example_inputs=example)
    from_file = qcompiler.compile(path, calib, eval=held_out)

    for a, b in zip(_outputs(from_module, held_out), _outputs(from_file, held_out)):
        np.testing.assert_array_equal(a, b)
    assert from_module.report.outputs[0].sqnr_db == pytest.approx(from_file.report.outputs[0].sqnr_db)
    assert from_module.report.kernels.integer_share == from_file.report.kernels.integer_share > 0.9
    # the float reference is the module itself, not only its export
    expected = module(torch.from_numpy(held_out[0]["x"])).detach().numpy()
    assert sqnr_db(expected, _outputs(from_module, held_out)[0]) > 25


def test_both_exporters_name_nodes_by_module_path():
    module, example = build_module("conv_bn_pool")
    for exporter in ("dynamo", "classic"):
        model = export(module, example, exporter=exporter)
        first, second = [n for n in model.graph.nodes if n.op_type == "Conv"]
        assert (second.meta["module"], second.name) == ("features.4", "features.4/Conv"), exporter
        # the first Conv absorbed its BatchNorm: dynamo's optimizer keeps the BatchNorm's scope
        assert first.meta["module"] == {"dynamo": "features.1", "classic": "features.0"}[exporter]
        linear = next(n for n in model.graph.nodes if n.op_type == "Gemm")
        assert linear.meta["module"] == "features.10"


def test_module_paths_in_dump_report_and_recipe(small_encoder):
    module, example, dims = small_encoder
    calib = token_batches(8, 1, lengths=(8, 24))
    recipe = Recipe.from_dict({"overrides": {"module": {"layer.1.attention": {"precision": "fp32"}}}})
    result = qcompiler.compile(module, calib, example_inputs=example, dynamic_shapes=dims, recipe=recipe, mode="static")

    text = ir.print_model(result.model)
    assert 'name="layer.0.attention.query/MatMul"' in text
    assert 'module="layer.0.attention.query"' in text
    kept_float = {n.name for n in result.model.graph.nodes if n.meta.get("precision") == "fp32"}
    assert {"layer.1.attention.query/MatMul", "layer.1.attention.output/MatMul"} <= kept_float
    assert not any(name.startswith(("layer.0", "layer.1.intermediate")) for name in kept_float)
    weights = {n.name: n.inputs[1] for n in result.model.graph.nodes if n.op_type == "MatMul"}
    assert weights["layer.1.attention.value/MatMul"].is_const  # read as a float initializer
    assert weights["layer.0.attention.value/MatMul"].producer.op_type == "DequantizeLinear"
    parsed = ir.parse_model(text)  # the annotations parse back
    assert ir.print_model(parsed) == text


def test_symbolic_dims_survive_and_variable_lengths_calibrate(small_encoder):
    module, example, dims = small_encoder
    calib = token_batches(12, 1, lengths=(4, 40))
    result = qcompiler.compile(module, calib, example_inputs=example, dynamic_shapes=dims)
    proto = ir.to_onnx(result.model)
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert shape == ["batch", "seq"]
    for batch, seq in ((1, 5), (3, 37)):
        feed = token_batches(1, 9, seq=seq, batch=batch)[0]
        expected = module(torch.from_numpy(feed["input_ids"])).detach().numpy()
        (actual,) = run_onnx(proto, feed)
        assert actual.shape == (batch, seq, 64)
        assert sqnr_db(expected, actual) > 15


def test_dataloader_calibrates_like_the_arrays_it_holds():
    module, example = build_module("conv_bn_pool")
    batches = _image_batches(6, 3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(np.concatenate([b["x"] for b in batches]))), batch_size=2)
    from_loader = qcompiler.compile(module, loader, eval=batches[:2], example_inputs=example)
    from_arrays = qcompiler.compile(module, batches, eval=batches[:2], example_inputs=example)
    for a, b in zip(_outputs(from_loader, batches[:2]), _outputs(from_arrays, batches[:2])):
        np.testing.assert_array_equal(a, b)


class _DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # Python control flow on data: torch.export cannot trace it
            return x * 2
        return x


def test_export_failures_are_clear():
    with pytest.raises(ExportError, match=r"torch.onnx.export \(dynamo\) failed on _DataDependent"):
        export(_DataDependent(), (torch.ones(2, 3),))
    module, example = build_module("conv_bn_pool")
    with pytest.raises(TypeError, match="needs example_inputs"):
        qcompiler.compile(module, _image_batches(2, 0))
    with pytest.raises(ValueError, match="exporter must be one of dynamo, classic"):
        export(module, example, exporter="jit")
    with pytest.raises(TypeError, match="for torch modules"):
        qcompiler.compile(onnx.ModelProto(), example_inputs=example)


def test_export_restores_training_mode():
    module, example = build_module("conv_bn_pool")
    module.train()
    model = export(module, example)
    assert module.training
    assert not any(n.op_type == "Dropout" for n in model.graph.nodes)
