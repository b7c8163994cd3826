"""The IR's invariants: use-lists under every mutation, safe iteration, verify(), views."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from qcompiler import ir
from qcompiler.ir import DType, Graph, Model, Node, TensorType, Use, Value

F32 = TensorType(DType.FLOAT, (2, 3))


def chain(length: int = 3) -> tuple[Graph, Value, list[Node]]:
    """x -> Relu -> Relu -> ... -> output."""
    x = Value("x", F32)
    graph = Graph("g", inputs=[x])
    nodes, current = [], x
    for i in range(length):
        node = graph.append(Node("Relu", [current], [Value(f"r{i}", F32)]))
        nodes.append(node)
        current = node.outputs[0]
    graph.set_outputs([current])
    return graph, x, nodes


def test_uses_follow_node_inputs_and_graph_outputs():
    graph, x, (a, b, c) = chain()
    assert x.uses() == (Use(a, 0),)
    assert c.outputs[0].uses() == (Use(graph, 0),)
    assert c.outputs[0].is_graph_output() and not a.outputs[0].is_graph_output()
    b.set_input(0, x)
    assert set(x.uses()) == {Use(a, 0), Use(b, 0)}
    assert a.outputs[0].uses() == ()
    ir.verify_graph(graph)


def test_replace_all_uses_rewires_nodes_and_outputs():
    graph, x, (a, b, c) = chain()
    c.outputs[0].replace_all_uses_with(b.outputs[0])
    assert graph.outputs == (b.outputs[0],)
    assert set(b.outputs[0].uses()) == {Use(c, 0), Use(graph, 0)}
    graph.remove(c)
    assert b.outputs[0].uses() == (Use(graph, 0),)
    ir.verify_graph(graph)


def test_remove_refuses_a_node_still_read():
    graph, _, (a, _, _) = chain()
    with pytest.raises(ValueError, match="still used"):
        graph.remove(a)


def test_insert_before_and_after_keep_order_and_uses():
    graph, x, (a, b, c) = chain()
    neg = graph.insert_before(b, Node("Neg", [a.outputs[0]], [Value("n", F32)]))
    b.set_input(0, neg.outputs[0])
    abs_ = graph.insert_after(c, Node("Abs", [c.outputs[0]], [Value("abs", F32)]))
    graph.set_output(0, abs_.outputs[0])
    assert [n.op_type for n in graph.nodes] == ["Relu", "Neg", "Relu", "Relu", "Abs"]
    assert list(reversed(graph.nodes))[0] is abs_
    ir.verify_graph(graph)


def test_iteration_survives_removal_and_insertion():
    """Removing every node while walking the list, and inserting behind the cursor."""
    graph, x, nodes = chain(5)
    seen = []
    for node in graph.nodes:
        seen.append(node.outputs[0].name)
        if node is nodes[1]:
            graph.insert_after(node, Node("Identity", [node.outputs[0]], [Value("id", F32)]))
    assert seen == ["r0", "r1", "id", "r2", "r3", "r4"]
    graph.set_outputs([x])
    for node in graph.nodes:
        for value in node.outputs:
            for use in value.uses():
                use.user.set_input(use.index, x)
        graph.remove(node)
    assert len(graph.nodes) == 0 and list(graph.nodes) == []
    assert x.uses() == (Use(graph, 0),)


def test_a_value_has_one_definition():
    graph, x, (a, _, _) = chain()
    with pytest.raises(ValueError, match="already defined"):
        Node("Neg", [x], [a.outputs[0]])
    with pytest.raises(ValueError, match="already defined"):
        graph.add_input(a.outputs[0])
    with pytest.raises(ValueError, match="already belongs"):
        graph.append(a)


def test_verify_reports_dangling_cycle_names_and_types():
    graph, x, (a, b, c) = chain()
    stray = Value("stray", F32)
    b.set_input(0, stray)
    a.set_input(0, c.outputs[0])  # a reads c, which comes after it: a cycle
    dup = graph.append(Node("Neg", [x], [Value("r1", None)]))
    graph.set_outputs([dup.outputs[0]])
    with pytest.raises(ir.VerifyError) as err:
        ir.verify_graph(graph)
    text = str(err.value)
    assert "%stray before it is defined" in text
    assert "%r2 before it is defined" in text
    assert "two values are named %r1" in text
    assert "output %r1 has no type" in text


def test_verify_catches_a_stale_use_list():
    graph, x, (a, _, _) = chain()
    x._uses[Use(a, 5)] = None  # simulate a bug in a mutation method
    with pytest.raises(ir.VerifyError, match="stale use"):
        ir.verify_graph(graph)


def test_sort_orders_nodes_and_detects_cycles():
    graph, x, (a, b, c) = chain()
    graph.nodes.remove(a)
    graph.nodes.insert_before(None, a)  # a now last: out of order
    with pytest.raises(ir.VerifyError):
        ir.verify_graph(graph)
    graph.sort()
    assert list(graph.nodes) == [a, b, c]
    ir.verify_graph(graph)
    a.set_input(0, c.outputs[0])
    with pytest.raises(ir.VerifyError, match="cycle"):
        graph.sort()


def test_model_verify_needs_imported_domains():
    graph, x, _ = chain()
    graph.append(Node("Gelu", [x], [Value("g", F32)], domain="com.example"))
    with pytest.raises(ir.VerifyError, match="com.example"):
        ir.verify_model(Model(graph, {"": 17}))
    ir.verify_model(Model(graph, {"": 17, "com.example": 1}))


def test_constants_carry_their_type():
    data = np.arange(6, dtype=np.int8).reshape(2, 3)
    value = Value("w", const=data)
    assert value.type == TensorType(DType.INT8, (2, 3)) and value.is_const
    graph = Graph("g", constants=[value], outputs=[value])
    ir.verify_graph(graph)
    value.type = TensorType(DType.FLOAT, (2, 3))
    with pytest.raises(ir.VerifyError, match="does not match its type"):
        ir.verify_graph(graph)


def test_quant_params_validate_their_shape():
    q = ir.QuantParams(DType.INT8, np.array([0.1, 0.2], np.float32), np.zeros(2, np.int8), axis=0)
    assert q == ir.QuantParams(DType.INT8, [0.1, 0.2], [0, 0], axis=0)
    with pytest.raises(ValueError, match="axis"):
        ir.QuantParams(DType.UINT8, [0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="not a quantized dtype"):
        ir.QuantParams(DType.FLOAT, 0.1, 0)
    ir.QuantParams(DType.INT4, np.ones((4, 2), np.float32), np.zeros((4, 2)), axis=1, block_size=32)


def test_subgraph_reads_register_as_uses_of_outer_values():
    x = Value("x", TensorType(DType.FLOAT, (2,)))
    cond = Value("c", TensorType(DType.BOOL, ()))
    then = Graph("then")
    neg = then.append(Node("Neg", [x], [Value("t", x.type)]))
    then.set_outputs(neg.outputs)
    other = Graph("else", outputs=[x])
    graph = Graph("g", inputs=[x, cond])
    if_node = graph.append(Node("If", [cond], [Value("y", x.type)],
                                attributes={"then_branch": then, "else_branch": other}))
    graph.set_outputs(if_node.outputs)
    assert set(x.uses()) == {Use(neg, 0), Use(other, 0)}
    assert then.parent is if_node and then.root is graph
    assert {v.name for v in graph.all_values()} == {"x", "c", "t", "y"}
    ir.verify_graph(graph)


def test_networkx_view_matches_the_graph():
    graph, x, (a, b, c) = chain()
    add = graph.append(Node("Add", [a.outputs[0], c.outputs[0]], [Value("sum", F32)]))
    graph.set_outputs(add.outputs)
    view = graph.to_networkx()
    assert set(view.nodes) == {x, a, b, c, add}
    assert view.number_of_edges() == 5  # x->a, a->b, b->c, a->add, c->add
    assert nx.is_directed_acyclic_graph(view)
    assert list(nx.topological_sort(view))[0] is x
    assert view.nodes[add].get("output") is True
    assert nx.shortest_path_length(view, x, add) == 2
    assert {d["value"].name for _, _, d in view.in_edges(add, data=True)} == {"r0", "r2"}


def test_attr_kinds_are_explicit():
    assert ir.infer_attr([1, 2]).kind == ir.AttrKind.INTS
    assert ir.infer_attr([1, 2.5]).kind == ir.AttrKind.FLOATS
    assert ir.infer_attr(0.1).value == float(np.float32(0.1))
    with pytest.raises(TypeError, match="empty list"):
        ir.infer_attr([])
    assert ir.Attr(ir.AttrKind.INTS, []) != ir.Attr(ir.AttrKind.FLOATS, [])


def test_fresh_names_avoid_every_name_in_the_model():
    names = ir.NameAllocator(chain()[0])
    assert names.fresh("r0") == "r0_1"
    assert names.fresh("new") == "new"


def test_freeze_input_turns_a_default_into_a_constant():
    graph, x, (a, _, _) = chain()
    bias = graph.add_input(Value("bias", const=np.ones((2, 3), np.float32)))
    graph.add_constant(bias)
    add = graph.append(Node("Add", [a.outputs[0], bias], [Value("sum", F32)]))
    with pytest.raises(ValueError, match="no default"):
        graph.freeze_input(x)
    assert not bias.is_const  # a caller may still feed it
    graph.freeze_input(bias)
    assert graph.inputs == (x,) and bias in graph.constants and bias.uses() == (Use(add, 1),)
    assert bias.is_const
    ir.verify_graph(graph)


def test_a_constant_is_an_initializer_or_a_constant_node_output_but_no_input_default():
    data = np.ones(2, np.float32)
    initializer = Value("w", const=data)
    default = Value("d", const=data)
    graph = Graph("g", inputs=[default], constants=[initializer, default])
    made = graph.append(Node("Constant", [], [Value("k")], attributes={"value": data})).outputs[0]
    floats = graph.append(Node("Constant", [], [Value("f")], attributes={"value_floats": [1.0, 2.0]})).outputs[0]
    text = graph.append(Node("Constant", [], [Value("s")], attributes={"value_string": "a"})).outputs[0]
    foreign = graph.append(Node("Constant", [], [Value("o")], attributes={"value": data}, domain="com.example"))
    relu = graph.append(Node("Relu", [initializer], [Value("r")])).outputs[0]
    assert initializer.is_const and initializer.const_array is data
    assert not default.is_const and default.const_array is None
    assert made.is_const and made.const_array is data
    assert floats.is_const and floats.const_array.dtype == np.float32 and floats.const_array.tolist() == [1.0, 2.0]
    assert text.is_const and text.const_array is None  # fixed, but no numbers to compute with
    assert not foreign.outputs[0].is_const and not relu.is_const and relu.const_array is None


def test_elided_data_is_constant_without_an_array():
    elided = Value("w", const=ir.ElidedTensor(DType.FLOAT, (2,), "w", "0" * 16))
    Graph("g", constants=[elided])
    assert elided.is_const and elided.const_array is None


def test_a_subgraph_reads_the_enclosing_graph_constants_as_constants():
    w = Value("w", const=np.ones(2, np.float32))
    cond = Value("c", TensorType(DType.BOOL, ()))
    body = Graph("then")
    read = body.append(Node("Neg", [w], [Value("t", w.type)]))
    body.set_outputs(read.outputs)
    graph = Graph("g", inputs=[cond], constants=[w])
    graph.append(Node("If", [cond], [Value("y", w.type)], attributes={"then_branch": body, "else_branch": body}))
    assert read.inputs[0].is_const and read.inputs[0].const_array is not None


def test_attr_reads_a_value_or_the_default():
    node = Node("Gemm", attributes={"transB": 1})
    assert node.attr("transB", 0) == 1 and node.attr("alpha", 1.0) == 1.0 and node.attr("beta") is None


def test_drop_unread_constants_removes_only_unread_constants_of_the_graph():
    data = np.ones(2, np.float32)
    unread, read, default = Value("u", const=data), Value("r", const=data), Value("d", const=data)
    graph = Graph("g", inputs=[default], constants=[unread, read, default])
    made = graph.append(Node("Constant", [], [Value("k")], attributes={"value": data}))
    user = graph.append(Node("Relu", [read], [Value("y")]))
    dead = graph.append(Node("Relu", [read], [Value("z")]))
    other = Graph("h", constants=[Value("v", const=data)])
    assert graph.drop_unread_constants([read, dead.outputs[0], other.constants[0], None]) == 0
    assert graph.drop_unread_constants([unread, made.outputs[0]]) == 2
    assert graph.constants == (read, default) and made not in graph.nodes
    user.set_input(0, default)
    dead.set_input(0, default)
    assert graph.drop_unread_constants() == 1 and graph.constants == (default,) and other.constants
    ir.verify_graph(graph)
