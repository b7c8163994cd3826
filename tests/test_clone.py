"""ir.clone_model, and pickling: copies of a model that passes and worker processes can rewrite."""

from __future__ import annotations

import numpy as np
import onnx
from helpers import random_feeds, run_onnx

from qcompiler import ir, passes
from qcompiler.ir.fileio import MappedArrays, mapped_region
from qcompiler.ir.onnx_export import ModelFile

TEXT = """model ir_version=8 opset{ai.onnx=17}
graph @main(%x: f32[2,4] range=[-1.0, 1.0] err<sqnr=30.0dB, added=30.0dB, cos=0.99, max=0.1>) {
  const %w: f32[4,4] = [1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 4]
  const %zero: f32[] = [0]
  const %flag: bool[] = [1]
  %y: f32[2,4] q<u8, scale=0.02, zp=0> meta{observer="minmax"} = MatMul(%x, %w) name="mm" meta{group="g#0"}
  %z: f32[2,4] = If(%flag) {
    then_branch=graph @then() {
      %a: f32[2,4] = Add(%y, %zero)
      return %a
    },
    else_branch=graph @else() {
      %b: f32[2,4] = Neg(%y)
      return %b
    }
  }
  return %z
}
"""


def test_a_clone_prints_the_same_and_computes_the_same():
    model = ir.parse_model(TEXT)
    copy = ir.clone_model(model)
    assert ir.print_model(copy) == ir.print_model(model)
    feeds = random_feeds(ir.to_onnx(model))
    np.testing.assert_array_equal(run_onnx(ir.to_onnx(copy), feeds)[0], run_onnx(ir.to_onnx(model), feeds)[0])
    ir.verify_model(copy)


def test_rewriting_the_clone_leaves_the_original_alone():
    model = ir.parse_model(TEXT)
    before = ir.print_model(model)
    copy = ir.clone_model(model)
    mm = next(n for n in copy.graph.nodes if n.name == "mm")
    mm.meta["precision"] = "fp32"
    copy.graph.outputs[0].name = "renamed"
    passes.PassManager("canonicalize,cleanup").run(copy, passes.PassContext())
    assert ir.print_model(model) == before
    weights = [v.const for v in model.graph.constants if v.name == "w"]
    assert any(c is weights[0] for c in (v.const for v in copy.graph.constants))  # arrays are shared, not copied


def test_a_clone_with_mapped_constants_exports_them_by_pointing_at_their_files():
    model = ir.parse_model(TEXT.replace("[1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 4]",
                                        "[" + ", ".join(map(str, range(16))) + "]"))
    arrays = MappedArrays(min_bytes=64)
    copy = ir.clone_model(model, constants=arrays.map)
    assert ir.print_model(copy) == ir.print_model(model)
    weight = next(v.const for v in copy.graph.constants if v.name == "w")
    assert mapped_region(weight) is not None and not weight.flags.writeable
    zeros = [next(v.const for v in g.graph.constants if v.name == "zero") for g in (model, copy)]
    assert zeros[1] is zeros[0]  # small: kept as it was
    with ModelFile(copy) as exported:
        proto = onnx.load(str(exported.path), load_external_data=False)
        stored = next(t for t in proto.graph.initializer if t.name == "w")
        assert stored.data_location == onnx.TensorProto.EXTERNAL  # a hard link to the mapped file, not a copy
        feeds = random_feeds(ir.to_onnx(model))
        np.testing.assert_array_equal(run_onnx(str(exported.path), feeds)[0], run_onnx(ir.to_onnx(model), feeds)[0])
    arrays.close()


def test_a_deep_model_pickles_to_the_same_text():
    """Worker processes receive models by pickle; a long chain must not exhaust pickle's recursion."""
    import pickle

    graph = ir.Graph("chain")
    value = graph.add_input(ir.Value("x", ir.TensorType(ir.DType.FLOAT, (1, 4))))
    for i in range(3000):
        value = graph.append(ir.Node("Relu", [value], [ir.Value(f"v{i}")], meta={"group": f"g{i % 7}"})).outputs[0]
    graph.set_outputs([value])
    model = ir.Model(graph, {"": 17})
    assert ir.print_model(pickle.loads(pickle.dumps(model))) == ir.print_model(model)
    parsed = ir.parse_model(TEXT)
    assert ir.print_model(pickle.loads(pickle.dumps(parsed))) == ir.print_model(parsed)
