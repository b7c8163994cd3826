"""ONNX -> IR -> ONNX and ONNX -> IR -> text -> IR -> ONNX keep models bit-exact.

Checked on every model ONNX ships under backend/test/data/light (opset 9, IR version 3
with initializers listed as inputs, odd names), on torch-exported models covering the
usual layers and an If, and on external data, custom domains and symbolic dims.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_same_outputs, random_feeds, run_onnx, through_text
from onnx import TensorProto, helper
from torch_models import MODEL_NAMES

from qcompiler import ir

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.name for p in LIGHT_DIR.glob("*.onnx"))


def check_round_trip(path_or_proto, feeds: dict[str, np.ndarray] | None = None) -> ir.Model:
    """Both round trips give the same ONNX bytes and ORT outputs as the original."""
    original = onnx.load(path_or_proto) if isinstance(path_or_proto, str | Path) else path_or_proto
    model = ir.load_model(path_or_proto)
    ir.verify_model(model)
    direct = ir.to_onnx(model)
    text, reparsed = through_text(model)
    ir.verify_model(reparsed)
    assert ir.print_model(reparsed, weights={}) == text
    via_text = ir.to_onnx(reparsed)
    assert via_text.SerializeToString() == direct.SerializeToString()
    onnx.checker.check_model(direct)
    feeds = feeds if feeds is not None else random_feeds(original)
    assert_same_outputs(run_onnx(original, feeds), run_onnx(direct, feeds))
    return model


def test_light_models_are_present():
    assert len(LIGHT_MODELS) >= 9, LIGHT_DIR


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_round_trip(name):
    check_round_trip(LIGHT_DIR / name)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_model_round_trip(name, torch_exports):
    exported = torch_exports[name]
    check_round_trip(exported.path, exported.feeds)


def test_if_subgraphs_survive(torch_exports):
    model = check_round_trip(torch_exports["if_branch"].path, torch_exports["if_branch"].feeds)
    (if_node,) = [n for n in model.graph.nodes if n.op_type == "If"]
    branches = {k: a.value for k, a in if_node.attributes.items()}
    assert set(branches) == {"then_branch", "else_branch"}
    assert all(len(g.nodes) > 0 and g.parent is if_node for g in branches.values())
    captured = [v for g in branches.values() for n in g.all_nodes() for v in n.inputs if v is not None and v.graph is model.graph]
    assert captured, "the branches read weights of the outer graph"
    assert all(any(u.user.graph in branches.values() for u in v.uses()) for v in captured)


def test_symbolic_dims_kept(torch_exports):
    exported = torch_exports["symbolic_dims"]
    model = check_round_trip(exported.path, exported.feeds)
    (x,) = model.graph.inputs
    assert x.shape[:2] == ("batch", "seq")
    text = ir.print_model(model)
    assert "%x: f32[batch,seq,16]" in text
    inner = [v for n in model.graph.nodes for v in n.outputs if v.shape and "seq" in v.shape]
    assert inner, "shape inference propagates the symbolic dims into the graph"


def test_external_data_round_trip(tmp_path, torch_exports):
    exported = torch_exports["mlp_matmul"]
    proto = onnx.load(exported.path)
    source = tmp_path / "external.onnx"
    onnx.save_model(proto, source, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external.weights", size_threshold=0)
    assert (tmp_path / "external.weights").exists()
    model = ir.load_model(source)
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    ir.save_model(model, target, external_data=True)
    assert (target.parent / "model.onnx.data").stat().st_size > 0
    assert_same_outputs(run_onnx(str(source), exported.feeds), run_onnx(str(target), exported.feeds))


def test_custom_domain_round_trip():
    """A com.microsoft contrib op and a float16 initializer go through unchanged."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [4], [0.5, -1.0, 2.0, 0.0])
    graph = helper.make_graph(
        [helper.make_node("BiasGelu", ["x", "bias"], ["y"], domain="com.microsoft", name="gelu")],
        "custom", [x], [y], [bias],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = check_round_trip(proto, {"x": np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)})
    assert "com.microsoft::BiasGelu(%x, %bias)" in ir.print_model(model)


def test_unsorted_nodes_are_sorted_on_import():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Neg", ["a"], ["y"]), helper.make_node("Relu", ["x"], ["a"])]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model = check_round_trip(proto, {"x": np.array([1.0, -2.0], dtype=np.float32)})
    assert [n.op_type for n in model.graph.nodes] == ["Relu", "Neg"]


def test_cleanup_option_folds_constants(torch_exports):
    exported = torch_exports["symbolic_dims"]
    plain = ir.load_model(exported.path)
    cleaned = ir.load_model(exported.path, cleanup=True)
    assert len(cleaned.graph.nodes) < len(plain.graph.nodes)
    assert_same_outputs(run_onnx(str(exported.path), exported.feeds), run_onnx(ir.to_onnx(cleaned), exported.feeds))


def test_dump_with_weights_file_parses_back(tmp_path, torch_exports):
    """A summarized dump plus its .npz is the same model; without the .npz it still prints the same."""
    model = ir.load_model(torch_exports["conv_bn_pool"].path)
    weights: dict[str, np.ndarray] = {}
    text = ir.print_model(model, weights=weights, weights_file="w.npz")
    assert "blob(" in text and weights
    ir.save_weights(weights, tmp_path / "w.npz")
    (tmp_path / "m.qir").write_text(text)
    back = ir.parse_file(tmp_path / "m.qir")
    assert ir.to_onnx(back).SerializeToString() == ir.to_onnx(model).SerializeToString()
    elided = ir.parse_model(text.split("\n", 1)[1])
    assert ir.print_model(elided, weights={}, weights_file="w.npz") == text
    with pytest.raises(ir.ExportError, match="elided"):
        ir.to_onnx(elided)


def test_large_model_uses_external_data_automatically(tmp_path, monkeypatch):
    """Above the protobuf limit the exporter switches to external data (limit lowered here)."""
    from qcompiler.ir import onnx_export

    monkeypatch.setattr(onnx_export, "_PROTOBUF_LIMIT", (64 << 20) + 1000)
    w = np.arange(4096, dtype=np.float32).reshape(64, 64)
    x = ir.Value("x", ir.TensorType(ir.DType.FLOAT, (1, 64)))
    weight = ir.Value("w", const=w)
    node = ir.Node("MatMul", [x, weight], [ir.Value("y", ir.TensorType(ir.DType.FLOAT, (1, 64)))])
    graph = ir.Graph("g", inputs=[x], constants=[weight], nodes=[node], outputs=node.outputs)
    ir.save_model(ir.Model(graph, {"": 17}), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    feeds = {"x": np.ones((1, 64), np.float32)}
    np.testing.assert_array_equal(run_onnx(str(tmp_path / "big.onnx"), feeds)[0], feeds["x"] @ w)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]


def loop_and_scan_model() -> onnx.ModelProto:
    """y = x summed 3 times by a Loop whose body reads the outer `step`; z = running sum by Scan."""
    f32 = TensorProto.FLOAT
    loop_body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", f32, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", f32, [2])],
    )
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "elem"], ["sum_out"]),
         helper.make_node("Identity", ["sum_out"], ["scan_out"])],
        "scan_body",
        [helper.make_tensor_value_info("sum_in", f32, [2]), helper.make_tensor_value_info("elem", f32, [2])],
        [helper.make_tensor_value_info("sum_out", f32, [2]), helper.make_tensor_value_info("scan_out", f32, [2])],
    )
    nodes = [
        helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=loop_body),
        helper.make_node("Scan", ["x", "rows"], ["total", "z"], body=scan_body, num_scan_inputs=1),
    ]
    graph = helper.make_graph(
        nodes, "control_flow",
        [helper.make_tensor_value_info("x", f32, [2]), helper.make_tensor_value_info("rows", f32, [4, 2])],
        [helper.make_tensor_value_info("y", f32, [2]), helper.make_tensor_value_info("total", f32, [2]),
         helper.make_tensor_value_info("z", f32, [4, 2])],
        [helper.make_tensor("trips", TensorProto.INT64, [], [3]), helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
         helper.make_tensor("step", f32, [2], [0.5, -1.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def test_loop_and_scan_round_trip():
    feeds = {"x": np.array([1.0, 2.0], np.float32), "rows": np.arange(8, dtype=np.float32).reshape(4, 2)}
    model = check_round_trip(loop_and_scan_model(), feeds)
    y, total, z = run_onnx(ir.to_onnx(model), feeds)
    np.testing.assert_array_equal(y, feeds["x"] + 3 * np.array([0.5, -1.0], np.float32))
    np.testing.assert_array_equal(z, feeds["x"] + np.cumsum(feeds["rows"], axis=0))
    loop = next(n for n in model.graph.nodes if n.op_type == "Loop")
    step = next(v for v in model.graph.constants if v.name == "step")
    assert [u.user.graph for u in step.uses()] == [loop.attributes["body"].value]


def test_shape_inference_sees_large_weights_by_type_only():
    """Large float initializers reach shape inference as typed inputs: the types found are the
    same, the caller's proto is untouched, and initializers keep their order."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w_big"),
               numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
               numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w_small")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_big"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["r"]),
         helper.make_node("MatMul", ["r", "w_small"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = proto.SerializeToString()
    model = ir.load_model(proto)
    assert proto.SerializeToString() == before
    assert [v.name for v in model.graph.constants] == ["w_big", "shape", "w_small"]
    assert [v.name for v in model.graph.inputs] == ["x"]
    h, r, _ = (n.outputs[0] for n in model.graph.nodes)
    assert h.shape == ("n", 64)  # from w_big's dims
    assert r.shape == ("n", 64)  # data propagation read the small integer constant
