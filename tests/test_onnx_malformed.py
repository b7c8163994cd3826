"""Every way a model file can be malformed is a ModelLoadError naming the file and the place."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir


def conv_model(weight: onnx.TensorProto | None = None, **conv_attributes) -> onnx.ModelProto:
    weight = weight if weight is not None else numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", weight.name], ["y"], name="conv_NAME", **conv_attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def load_error(source) -> str:
    with pytest.raises(ir.ModelLoadError) as caught:
        ir.load_model(source)
    return str(caught.value)


@pytest.mark.parametrize("field", [b"conv_NAME", b"Conv", b"pads"])
def test_a_name_that_is_not_utf8_is_named_by_its_field(field):
    data = conv_model(pads=[1, 1, 1, 1]).SerializeToString()
    assert data.count(field) == 1
    corrupt = data.replace(field, field[:-2] + b"\xff\xfe")
    place = {b"conv_NAME": "graph.node[0].name", b"Conv": "graph.node[0].op_type",
             b"pads": "graph.node[0].attribute[0].name"}[field]
    assert load_error(corrupt).startswith(f"<bytes>: model.{place} is not valid UTF-8 text (")


def test_raw_data_that_does_not_match_its_dims_names_the_initializer():
    weight = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w")
    weight.raw_data = weight.raw_data[:36 * 4]
    assert load_error(conv_model(weight)) == ("<model>: graph 'g' initializer 'w' has 144 bytes of raw data, but dims "
                                              "[8, 1, 3, 3] of FLOAT need 288")


def test_typed_data_that_does_not_fit_its_dims_names_the_initializer():
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8, 1, 3, 3], float_data=[1.0] * 36)
    assert load_error(conv_model(weight)).startswith("<model>: graph 'g' initializer 'w' holds data that does not fit "
                                                     "dims [8, 1, 3, 3] of FLOAT")


def test_an_element_type_onnx_does_not_define_is_refused():
    weight = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w")
    weight.data_type = 99
    assert load_error(conv_model(weight)) == ("<model>: graph 'g' initializer 'w' has element type 99, which ONNX "
                                              "does not define")
    model = conv_model()
    model.graph.input[0].type.tensor_type.elem_type = 77
    assert load_error(model) == "<model>: graph 'g' input 'x' has element type 77, which ONNX does not define"


def test_a_graph_without_outputs_is_refused():
    model = conv_model()
    del model.graph.output[:]
    assert load_error(model) == "<model>: graph 'g' has no outputs"


def test_an_attribute_whose_type_does_not_match_its_schema_is_refused():
    model = conv_model(pads=[1, 1, 1, 1])
    model.graph.node[0].attribute[0].type = TensorProto.FLOAT  # 1 is FLOAT for attributes too
    assert load_error(model) == ("<model>: graph 'g' node 0 'conv_NAME' (Conv) attribute 'pads' is FLOAT, but Conv "
                                 "takes INTS")
    model.graph.node[0].attribute[0].type = onnx.AttributeProto.UNDEFINED  # what an unknown code parses to
    assert load_error(model) == ("<model>: graph 'g' node 0 'conv_NAME' (Conv) attribute 'pads' has attribute type 0, "
                                 "which ONNX does not define")


def external(tmp_path, location: str, offset: int = 0, length: int = 288, file_bytes: int = 288) -> str:
    (tmp_path / "w.bin").write_bytes(b"\0" * file_bytes)
    weight = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        weight.external_data.add(key=key, value=value)
    path = tmp_path / "model.onnx"
    path.write_bytes(conv_model(weight).SerializeToString())
    return load_error(path)


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin", ""])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    assert external(tmp_path, location).endswith(f"tensor 'w': external data location {location!r} is not a path "
                                                 "inside the model's folder")


def test_external_data_past_the_end_of_its_file_is_refused(tmp_path):
    message = external(tmp_path, "w.bin", offset=100, file_bytes=300)
    assert message == f"{tmp_path / 'model.onnx'}: tensor 'w' needs bytes 100..388 of {tmp_path / 'w.bin'}, which has only 300 bytes (truncated?)"
    assert external(tmp_path, "w.bin", length=100).endswith("tensor 'w': external data length 100 does not match its "
                                                            "shape [8, 1, 3, 3] of f32")


def test_qc_dump_of_a_corrupt_file_prints_one_line_and_exits_1(tmp_path, capsys):
    from qcompiler.cli import main

    path = tmp_path / "corrupt.onnx"
    path.write_bytes(conv_model(pads=[1, 1, 1, 1]).SerializeToString().replace(b"conv_NAME", b"conv_NA\xff\xfe"))
    assert main(["dump", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"qc: error: {path}: model.graph.node[0].name is not valid UTF-8 text")


def test_an_attribute_declared_sparse_without_its_tensor_is_refused():
    model = conv_model()
    model.graph.node[0].attribute.add(name="sparse", type=onnx.AttributeProto.SPARSE_TENSOR)
    assert load_error(model) == ("<model>: graph 'g' node 0 'conv_NAME' (Conv) attribute 'sparse' sparse tensor 0 "
                                 "values has element type 0, which ONNX does not define")


def test_loading_a_model_that_defeats_symbolic_shape_inference_writes_no_file(tmp_path, monkeypatch):
    """ONNX Runtime's symbolic inference saves its partial result into the working folder."""
    node = helper.make_node("Custom", ["x"], ["y"], domain="com.example")
    relu = helper.make_node("Relu", ["y"], ["z"])
    graph = helper.make_graph([node, relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    monkeypatch.chdir(tmp_path)
    assert [n.op_type for n in ir.load_model(model).graph.nodes] == ["Custom", "Relu"]
    assert list(tmp_path.iterdir()) == []
