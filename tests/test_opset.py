"""ir.convert_opset: raise the default-domain opset with ONNX's converter, trusted only when
ONNX Runtime computes the same with the converted model as with the original.

The references are ONNX Runtime runs of the original model on our own feeds; the failing
cases are real converter faults (an adapter that relabels Hardmax although `axis` changed
meaning at opset 13; one that refuses BatchNormalization's spatial=0)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run_onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir


def model(nodes, inputs, outputs, opset: int, initializers=(), ir_version: int = 6) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir_version
    return proto


def tensor(name: str, shape, elem_type=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem_type, shape)


def conv_model(ir_version: int = 6) -> onnx.ModelProto:
    """Opset 11, batch dim symbolic: Conv -> Relu -> Softmax(axis=1) -> ReduceMean(axes=[2, 3]).

    Softmax flattens from `axis` before opset 13 and ReduceMean takes axes as an input from
    18, so the converter rewrites both; the Conv and Relu only change label.
    """
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Softmax", ["r"], ["s"], axis=1),
             helper.make_node("ReduceMean", ["s"], ["y"], axes=[2, 3], keepdims=0)]
    inputs = [tensor("x", ["N", 3, 6, 6])]
    if ir_version < 4:  # initializers must also be graph inputs
        inputs += [tensor("w", [4, 3, 3, 3]), tensor("b", [4])]
    return model(nodes, inputs, [tensor("y", ["N", 4])], 11, weights, ir_version)


def opsets(proto: onnx.ModelProto) -> dict[str, int]:
    return {o.domain: o.version for o in proto.opset_import}


@pytest.mark.parametrize("target", [13, 17, 21])
def test_conv_model_converts_with_identical_outputs(target):
    original = conv_model()
    converted = ir.convert_opset(original, target)
    assert opsets(converted) == {"": target} and opsets(original) == {"": 11}
    assert converted.ir_version == max(6, helper.find_min_ir_version_for(converted.opset_import))
    onnx.checker.check_model(converted, full_check=True)
    x = np.random.default_rng(5).standard_normal((3, 3, 6, 6)).astype(np.float32)
    want, got = run_onnx(original, {"x": x})[0], run_onnx(converted, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # the old meaning held: one softmax over C*H*W per sample (a per-channel one would sum to 1 over C)
    assert not np.allclose(want.sum(axis=1), 1.0)


def test_ir3_initializer_inputs_become_constants():
    original = conv_model(ir_version=3)
    converted = ir.convert_opset(original, 13)
    assert converted.ir_version == 7
    assert [i.name for i in converted.graph.input] == ["x"]
    assert [i.name for i in original.graph.input] == ["x", "w", "b"]
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(converted, {"x": x})[0], run_onnx(original, {"x": x})[0], rtol=1e-6)


def test_a_relabelled_op_that_changed_meaning_is_caught():
    """The converter's Hardmax 12->13 adapter keeps the node, but opset 13's Hardmax takes the
    maximum along `axis` only, where older ones flattened all axes from it on."""
    proto = model([helper.make_node("Hardmax", ["x"], ["y"], axis=1)], [tensor("x", [2, 3, 4])],
                  [tensor("y", [2, 3, 4])], 11)
    converted = onnx.version_converter.convert_version(proto, 13)  # what the check guards against
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    assert not np.array_equal(run_onnx(proto, {"x": x})[0], run_onnx(converted, {"x": x})[0])
    with pytest.raises(ir.ModelLoadError, match=r"^hardmax\.onnx: converting from opset 11 to 13 changes output "
                       r"'y': max \|difference\| 1 .*\(ops whose definition changed: Hardmax\)$"):
        ir.convert_opset(proto, 13, label="hardmax.onnx")


def test_a_converter_failure_names_the_step_and_the_op():
    ones = [numpy_helper.from_array(np.ones((2, 2, 2), np.float32), n) for n in ("s", "b", "m", "v")]
    proto = model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0)],
                  [tensor("x", [1, 2, 2, 2])], [tensor("y", [1, 2, 2, 2])], 7, ones)
    with pytest.raises(ir.ModelLoadError) as caught:
        ir.convert_opset(proto, 13)
    assert str(caught.value) == (
        "model 'g': cannot convert from opset 7 to 13: the ONNX version converter fails from opset 8 to 9 "
        "(ops changing there: BatchNormalization): Attribute spatial must have value 1")


def test_a_model_ort_cannot_run_is_not_converted_unchecked():
    """Reshape to a shape fed at run time: random feeds make a shape that does not fit."""
    proto = model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                  [tensor("x", [2, 3]), tensor("shape", [2], TensorProto.INT64)], [tensor("y", None)], 11)
    with pytest.raises(ir.ModelLoadError, match=r"^model 'g' at opset 11 does not run in ONNX Runtime, "
                                                r"so the conversion cannot be checked: "):
        ir.convert_opset(proto, 13)


@pytest.mark.parametrize("target", [11, 9])
def test_a_target_not_above_the_model_opset_returns_it_unchanged(target):
    proto = conv_model()
    before = proto.SerializeToString()
    assert ir.convert_opset(proto, target) is proto
    assert proto.SerializeToString() == before
