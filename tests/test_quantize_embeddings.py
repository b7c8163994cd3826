"""quantize-embeddings: tables looked up through GatherBlockQuantized, checked against numpy's blockwise math."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_onnx
from onnx import TensorProto, helper, numpy_helper
from test_weight_only import numpy_dequantized

from qcompiler import ir
from qcompiler.passes import PassContext, PassManager, PipelineError


def lookup(table: np.ndarray, ids_shape=(2, 5), opset: int = 17) -> ir.Model:
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, list(ids_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*ids_shape, table.shape[1]])],
                              [numpy_helper.from_array(table, "table")])
    return ir.load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_come_back_as_numpy_dequantizes_them(bits):
    """[300, 200]: blocks of 64 along the hidden axis, the last one partial."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((300, 200)).astype(np.float32)
    model = lookup(table)
    ctx = PassContext()
    PassManager(f"quantize-embeddings{{bits={bits},block_size=64}}").run(model, ctx)
    assert [n.op_type for n in model.graph.nodes] == ["GatherBlockQuantized"]
    ids = rng.integers(0, 300, (2, 5))
    (got,) = run_onnx(ir.to_onnx(model), {"ids": ids})
    symmetric = bits == 4
    want = numpy_dequantized(table, 1, 64, bits, symmetric, (-8, 7) if symmetric else (0, 255))[ids]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    report = ctx.report["quantize-embeddings"]
    assert report["tables"] == 1 and report["float_bytes"] == table.nbytes
    blocks = 300 * 4  # four blocks per row
    assert report["quantized_bytes"] == table.size * bits // 8 + 4 * blocks + (blocks if bits == 8 else 0)


def test_a_table_read_twice_is_stored_once_and_small_or_kept_tables_stay_float():
    rng = np.random.default_rng(4)
    tables = {"words": rng.standard_normal((512, 64)), "types": rng.standard_normal((2, 64)),
              "kept": rng.standard_normal((512, 64))}
    nodes = [helper.make_node("Gather", ["words", "ids"], ["a"], name="first"),
             helper.make_node("Gather", ["words", "ids"], ["b"], name="second"),
             helper.make_node("Gather", ["types", "ids"], ["c"], name="small"),
             helper.make_node("Gather", ["kept", "ids"], ["d"], name="keep"),
             helper.make_node("Sum", ["a", "b", "c", "d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tables.items()])
    model = ir.load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    next(n for n in model.graph.nodes if n.name == "keep").meta["precision"] = "fp32"
    ctx = PassContext()
    PassManager("quantize-embeddings").run(model, ctx)
    ops = {n.name: n.op_type for n in model.graph.nodes if n.name}
    assert ops == {"first": "GatherBlockQuantized", "second": "GatherBlockQuantized", "small": "Gather",
                   "keep": "Gather"}
    first, second = (n for n in model.graph.nodes if n.op_type == "GatherBlockQuantized")
    assert first.inputs[0] is second.inputs[0]
    assert "words" not in {v.name for v in model.graph.constants}  # the float table went
    assert (ctx.report["quantize-embeddings"]["tables"], ctx.report["quantize-embeddings"]["skipped"]) == (1, 2)


def test_options_are_checked():
    for text, message in (("bits=6", "bits must be 4 or 8"), ("block_size=100", "power of two")):
        with pytest.raises(PipelineError, match=message):
            PassManager(f"quantize-embeddings{{{text}}}")
