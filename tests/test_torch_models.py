"""The exported models are valid ONNX and ONNX Runtime agrees with torch on them."""

import numpy as np
import onnx
import pytest
import torch

from torch_models import MODEL_NAMES, build_module, export_model

from qcompiler.ir.evaluate import open_session


def _torch_outputs(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the eager module on the ONNX feeds (in graph-input order)."""
    module, _ = build_module(name)
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(value) for value in feeds.values()))
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [output.numpy() for output in outputs]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnxruntime_matches_torch(name, tmp_path):
    exported = export_model(name, tmp_path)
    onnx.checker.check_model(onnx.load(exported.path), full_check=True)
    got = open_session(exported.path).run(None, exported.feeds)
    want = _torch_outputs(name, exported.feeds)
    assert len(got) == len(want)
    for actual, expected in zip(got, want):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_is_deterministic_and_self_contained(name, tmp_path):
    first = export_model(name, tmp_path / "a")
    second = export_model(name, tmp_path / "b")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert [p.name for p in first.path.parent.iterdir()] == [f"{name}.onnx"]


def test_if_branch_has_if_node_with_subgraphs(tmp_path):
    graph = onnx.load(export_model("if_branch", tmp_path).path).graph
    (if_node,) = [node for node in graph.node if node.op_type == "If"]
    branches = {attr.name: attr.g for attr in if_node.attribute}
    assert set(branches) == {"then_branch", "else_branch"}
    assert all(len(branch.node) > 0 for branch in branches.values())


def test_if_branch_both_branches_match_torch(tmp_path):
    exported = export_model("if_branch", tmp_path)
    session = open_session(exported.path)
    for sign in (1.0, -1.0):  # the sign of the input mean picks the branch
        feeds = {"x": np.float32(sign) * exported.feeds["x"]}
        (got,) = session.run(None, feeds)
        (want,) = _torch_outputs("if_branch", feeds)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_symbolic_dims_input_has_dim_params(tmp_path):
    exported = export_model("symbolic_dims", tmp_path)
    (graph_input,) = onnx.load(exported.path).graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert [dim.dim_param for dim in dims[:2]] == ["batch", "seq"]
    example = build_module("symbolic_dims")[1][0]
    assert exported.feeds["x"].shape[:2] != tuple(example.shape[:2])
