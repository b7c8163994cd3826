"""The pattern matcher and the greedy driver (passes/transforms/patterns.py)."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler import ir
from qcompiler.passes.transforms.patterns import (
    Any, Const, Either, Match, Op, Optional, Pattern, apply_patterns, erase, not_graph_output,
    used_only_inside,
)

CONV_BN = Op(
    "BatchNormalization",
    Op("Conv", Any("x"), Const("w"), Optional(Const("b")), bind="conv"),
    Const("scale"), Const("bias"), Const("mean"), Const("var"), bind="bn",
)

CONV_BN_TEXT = """
model ir_version=10 opset{ai.onnx=21}
graph @g(%x: f32[1,1,4,4]) {
  const %w: f32[2,1,1,1] = [1.0, 2.0]
  const %s: f32[2] = [1.0, 1.0]
  const %t: f32[2] = [0.0, 0.0]
  %c: f32[1,2,4,4] = Conv(%x, %w) name="conv"
  %y: f32[1,2,4,4] = BatchNormalization(%c, %s, %t, %t, %s) name="bn"
  %z: f32[1,2,4,4] = Relu(%c) name="other"
  return %y, %z
}
"""


def node(graph: ir.Graph, name: str) -> ir.Node:
    return next(n for n in graph.nodes if n.name == name)


def relu_chain(length: int) -> ir.Graph:
    text = "model ir_version=10 opset{ai.onnx=21}\ngraph @g(%v0: f32[4]) {\n"
    text += "".join(f'  %v{i}: f32[4] = Relu(%v{i - 1}) name="r{i}"\n' for i in range(1, length + 1))
    return ir.parse_model(text + f"  return %v{length}\n}}\n").graph


def test_match_binds_nodes_values_and_edges():
    graph = ir.parse_model(CONV_BN_TEXT).graph
    (match,) = CONV_BN.match(node(graph, "bn").outputs[0], Match())
    assert match.root is node(graph, "bn") and match["conv"] is node(graph, "conv")
    assert match["x"] is graph.inputs[0] and "b" not in match  # the optional bias is absent
    np.testing.assert_array_equal(match.const("w"), [[[[1.0]]], [[[2.0]]]])
    assert match.nodes == (node(graph, "bn"), node(graph, "conv"))
    assert match.intermediates() == [node(graph, "conv").outputs[0]]
    assert ir.Use(node(graph, "bn"), 0) in match.edges


def test_filters_reject_an_intermediate_read_elsewhere():
    graph = ir.parse_model(CONV_BN_TEXT).graph
    bn = node(graph, "bn")
    assert list(Pattern("p", CONV_BN, None).matches(bn))  # no filter: matches
    assert not list(Pattern("p", CONV_BN, None, filters=(used_only_inside,)).matches(bn))  # %c feeds "other" too
    assert list(Pattern("p", CONV_BN, None, filters=(not_graph_output,)).matches(bn))


def test_not_graph_output_rejects_an_intermediate_graph_output():
    graph = relu_chain(2)
    pattern = Pattern("pair", Op("Relu", Op("Relu")), None, filters=(not_graph_output,))
    assert list(pattern.matches(node(graph, "r2")))
    graph.set_outputs([graph.outputs[0], node(graph, "r1").outputs[0]])
    assert not list(pattern.matches(node(graph, "r2")))


def test_a_name_bound_twice_must_bind_the_same_value():
    text = """
    model ir_version=10 opset{ai.onnx=21}
    graph @g(%x: f32[4], %y: f32[4]) {
      %m: f32[4] = Neg(%x) name="neg"
      %a: f32[4] = Sub(%x, %m) name="same"
      %b: f32[4] = Sub(%y, %m) name="other"
      return %a, %b
    }
    """
    graph = ir.parse_model(text).graph
    x = Any("x")
    pattern = Pattern("p", Op("Sub", x, Op("Neg", x)), None)
    assert list(pattern.matches(node(graph, "same")))
    assert not list(pattern.matches(node(graph, "other")))


def test_commutative_either_and_constant_nodes():
    text = """
    model ir_version=10 opset{ai.onnx=21}
    graph @g(%x: f32[4]) {
      %h: f32[] = Constant() {value=tensor<f32[]>[0.5]} name="half"
      %a: f32[4] = Mul(%h, %x) name="swapped"
      %b: f32[4] = Div(%x, %h) name="div"
      return %a, %b
    }
    """
    graph = ir.parse_model(text).graph
    half = Pattern("p", Op("Mul", Any("x"), Const("k", value=0.5)), None)
    assert not list(half.matches(node(graph, "swapped")))
    commutative = Pattern("p", Op("Mul", Any("x"), Const("k", value=0.5), commutative=True), None)
    (match,) = commutative.matches(node(graph, "swapped"))
    assert match["x"] is graph.inputs[0] and float(match.const("k")) == 0.5
    either = Either(Op("Mul", Any(), Const(value=0.5), commutative=True), Op("Div", Any(), Const(value=0.5)))
    assert either.root_ops() == {"Mul", "Div"}
    assert list(Pattern("p", either, None).matches(node(graph, "div")))
    assert not list(Pattern("p", Op("Div", Any(), Const(value=2.0)), None).matches(node(graph, "div")))


def mark(label):
    def rewrite(graph, match):
        match.root.meta["by"] = label
        return True

    return rewrite


def unmarked(match):
    return "by" not in match.root.meta


def test_driver_applies_by_benefit_and_counts():
    graph = relu_chain(2)
    low = Pattern("low", Op("Relu"), mark("low"), filters=(unmarked,), benefit=1)
    high = Pattern("high", Op(("Relu", "Neg")), mark("high"), filters=(unmarked,), benefit=2)
    result = apply_patterns(graph, [low, high])
    assert [n.meta["by"] for n in graph.nodes] == ["high", "high"]
    assert result.counts == {"high": 2} and result.sweeps == 2 and result.converged


def test_a_declined_rewrite_lets_the_next_pattern_try():
    graph = relu_chain(1)
    declines = Pattern("declines", Op("Relu"), lambda graph, match: False, benefit=2)
    result = apply_patterns(graph, [declines, Pattern("low", Op("Relu"), mark("low"), filters=(unmarked,))])
    assert node(graph, "r1").meta["by"] == "low" and result.counts == {"low": 1}


def test_matches_of_one_sweep_do_not_overlap():
    graph = relu_chain(4)
    pairs = []

    def record(graph, match):
        pairs.append(tuple(n.name for n in match.nodes))
        return True

    result = apply_patterns(graph, [Pattern("pair", Op("Relu", Op("Relu")), record)], max_iterations=1)
    assert pairs == [("r2", "r1"), ("r4", "r3")]  # r3+r2 would share r2 with the first match
    assert result.counts == {"pair": 2} and not result.converged


def test_rewrites_reach_a_fixpoint():
    graph = relu_chain(4)

    def bypass(graph, match):  # Relu(Relu(v)) -> Relu(v)
        match.root.outputs[0].replace_all_uses_with(match.nodes[1].outputs[0])
        match.nodes[1].outputs[0].name = match.root.outputs[0].name
        erase(graph, [match.root])
        return True

    result = apply_patterns(graph, [Pattern("idempotent", Op("Relu", Op("Relu")), bypass)])
    assert len(graph.nodes) == 1 and graph.outputs[0].name == "v4"
    assert result.counts == {"idempotent": 3} and result.converged
    ir.verify_graph(graph)


def test_the_iteration_cap_stops_a_rewrite_that_never_settles():
    graph = relu_chain(1)

    def bump(graph, match):
        match.root.meta["n"] = match.root.meta.get("n", 0) + 1
        return True

    result = apply_patterns(graph, [Pattern("forever", Op("Relu"), bump)], max_iterations=3)
    assert result.counts == {"forever": 3} and result.sweeps == 3 and not result.converged
    assert node(graph, "r1").meta["n"] == 3


def test_erase_drops_constants_only_the_erased_nodes_read():
    text = """
    model ir_version=10 opset{ai.onnx=21}
    graph @g(%x: f32[2]) {
      const %k: f32[2] = [1.0, 2.0]
      const %shared: f32[2] = [3.0, 4.0]
      %c: f32[2] = Constant() {value=tensor<f32[2]>[5.0, 6.0]} name="constant"
      %a: f32[2] = Add(%x, %k) name="a"
      %b: f32[2] = Mul(%a, %c) name="b"
      %d: f32[2] = Mul(%b, %shared) name="d"
      %e: f32[2] = Sub(%x, %shared) name="e"
      return %e
    }
    """
    model = ir.parse_model(text)
    graph = model.graph
    erase(graph, [node(graph, "d"), node(graph, "b"), node(graph, "a")])
    assert [n.name for n in graph.nodes] == ["e"]
    assert [v.name for v in graph.constants] == ["shared"]
    ir.verify_model(model)


def test_pattern_names_are_kebab_case():
    with pytest.raises(ValueError, match="kebab"):
        Pattern("conv_bn", Op("Conv"), None)
