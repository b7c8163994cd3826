"""Quantization plans per op type, whole-model plans and sharing, and the insert-observers pass."""

from __future__ import annotations

import pathlib

import pytest

from qcompiler import ir
from qcompiler.passes import Overrides, PassContext, PassError, PassManager, PipelineError, Verifier, parse_pipeline
from qcompiler.passes.analyses import rules
from qcompiler.passes.analyses.rules import Bias, QuantPlan, Weight
from qcompiler.passes.transforms.insert_observers import InsertObservers

TEXT_CASES = pathlib.Path(__file__).parent / "passes" / "insert-observers"


def model(body: str, inputs: str = "%x: f32[1,4,8,8]") -> ir.Model:
    """A model from the statements of its graph (the last line returns)."""
    return ir.parse_model(f"model ir_version=10 opset{{ai.onnx=21}}\ngraph @g({inputs}) {{\n{body}\n}}\n")


def by_name(m: ir.Model) -> dict[str, QuantPlan]:
    return {node.name: plan for node, plan in rules.plans(m).items()}


def leaders(m: ir.Model) -> dict[str, str]:
    return {value.name: leader.name for value, leader in rules.quantized_values(m).items()}


def run(m: ir.Model, pipeline: str = "insert-observers", overrides: Overrides | None = None) -> ir.Model:
    PassManager(pipeline).run(m, PassContext(overrides=overrides or Overrides(), instruments=[Verifier()]))
    return m


def marks(m: ir.Model) -> dict[str, dict]:
    values = [*m.graph.inputs, *(v for n in m.graph.nodes for v in n.outputs)]
    return {v.name: {k: v.meta[k] for k in ("observer", "observer_options", "observer_follows") if k in v.meta}
            for v in values if any(k.startswith("observer") for k in v.meta)}


W44 = "  const %w: f32[4,4] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]\n"
CONV = """\
  const %w: f32[4,4,1,1] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
  const %b: f32[4] = [0.0, 1.0, 2.0, 3.0]
"""


# -- weights and their axes ------------------------------------------------------------


def test_conv_weight_per_output_channel_bias_and_output():
    m = model(CONV + '  %y: f32[1,4,8,8] = Conv(%x, %w, %b) name="conv"\n  return %y')
    assert by_name(m)["conv"] == QuantPlan(activations=(0,), weights=(Weight(1, 0),), bias=Bias(2, 0, 1), outputs=(0,))


def test_conv_transpose_weight_axis_1_per_group():
    m = model('  const %w: f32[4,1,1,1] = [1.0, 2.0, 3.0, 4.0]\n'
              '  %y: f32[1,4,8,8] = ConvTranspose(%x, %w) {group=4} name="up"\n  return %y')
    assert by_name(m)["up"] == QuantPlan(activations=(0,), weights=(Weight(1, 1),), outputs=(0,))


@pytest.mark.parametrize("trans_b, shape, axis", [(0, "[4,3]", 1), (1, "[3,4]", 0)])
def test_gemm_weight_axis_follows_trans_b(trans_b, shape, axis):
    data = ", ".join(["1.0"] * 12)
    m = model(f'  const %w: f32{shape} = [{data}]\n  const %c: f32[3] = [1.0, 2.0, 3.0]\n'
              f'  %y: f32[2,3] = Gemm(%x, %w, %c) {{transB={trans_b}}} name="fc"\n  return %y', "%x: f32[2,4]")
    assert by_name(m)["fc"] == QuantPlan(activations=(0,), weights=(Weight(1, axis),), bias=Bias(2, 0, 1), outputs=(0,))


@pytest.mark.parametrize("attrs", ["{beta=0.5}", "{alpha=2.0}"])
def test_gemm_c_stays_float_unless_alpha_and_beta_are_one(attrs):
    data = ", ".join(["1.0"] * 12)
    m = model(f'  const %w: f32[4,3] = [{data}]\n  const %c: f32[3] = [1.0, 2.0, 3.0]\n'
              f'  %y: f32[2,3] = Gemm(%x, %w, %c) {attrs} name="fc"\n  return %y', "%x: f32[2,4]")
    assert by_name(m)["fc"].bias is None


def test_matmul_constant_2d_weight_last_axis_and_other_constants_per_tensor():
    m = model('  const %w: f32[4,2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]\n'
              '  const %v: f32[2] = [1.0, 2.0]\n'
              '  %h: f32[3,2] = MatMul(%x, %w) name="mm"\n'
              '  %y: f32[3] = MatMul(%h, %v) name="mv"\n  return %y', "%x: f32[3,4]")
    plans = by_name(m)
    assert plans["mm"] == QuantPlan(activations=(0,), weights=(Weight(1, 1),), outputs=(0,))
    assert plans["mv"] == QuantPlan(activations=(0,), weights=(Weight(1, None),), outputs=(0,))


def test_matmul_of_two_activations_quantizes_both():
    m = model('  %y: f32[2,2] = MatMul(%a, %b) name="mm"\n  return %y', "%a: f32[2,3], %b: f32[3,2]")
    assert by_name(m)["mm"] == QuantPlan(activations=(0, 1), outputs=(0,))
    assert leaders(m) == {"a": "a", "b": "b", "y": "y"}


def test_weight_that_is_not_a_constant_is_an_activation():
    """A graph input with a default may be fed by the caller: not a weight either."""
    m = ir.parse_model(
        "model ir_version=10 opset{ai.onnx=21}\ngraph @g(%x: f32[1,1,2,2], %w: f32[1,1,1,1]) {\n"
        "  default %w = [2.0]\n  %y: f32[1,1,2,2] = Conv(%x, %w) name=\"conv\"\n  return %y\n}\n")
    assert by_name(m)["conv"] == QuantPlan(activations=(0, 1), outputs=(0,))


# -- fusion groups ---------------------------------------------------------------------


def test_fused_group_quantizes_its_boundary_only():
    m = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w, %b) name="conv" meta{group="conv-act#0"}\n'
              '  %y: f32[1,4,8,8] = Relu(%c) name="relu" meta{group="conv-act#0"}\n  return %y')
    plans = by_name(m)
    assert plans["conv"] == QuantPlan(activations=(0,), weights=(Weight(1, 0),), bias=Bias(2, 0, 1))
    assert plans["relu"] == QuantPlan(outputs=(0,))
    assert leaders(m) == {"x": "x", "y": "y"}


def test_matmul_bias_group_keeps_the_bias_add_float_and_quantizes_the_activation_output():
    m = run(model('  const %w: f32[4,2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]\n'
                  '  const %bias: f32[2] = [0.5, -0.5]\n'
                  '  %h: f32[2,3,2] = MatMul(%x, %w) name="mm"\n'
                  '  %a: f32[2,3,2] = Add(%h, %bias) name="add"\n'
                  '  %y: f32[2,3,2] = Relu(%a) name="relu"\n  return %y', "%x: f32[2,3,4]"), "fuse")
    plans = by_name(m)
    assert {n.meta["group"] for n in m.graph.nodes} == {"matmul-bias#0"}
    assert plans["mm"] == QuantPlan(activations=(0,), weights=(Weight(1, 1),))
    assert plans["add"] == QuantPlan()
    assert plans["relu"] == QuantPlan(outputs=(0,))


def test_group_follows_its_first_node_and_an_override_on_any_member():
    body = ('  %a: f32[1,4,8,8] = Add(%x, %x) name="add" meta{group="add-act#0"}\n'
            '  %y: f32[1,4,8,8] = Relu(%a) name="relu" meta{group="add-act#0"}\n  return %y')
    assert by_name(model(body)) == {}  # an Add starts no quantized region: x is not quantized
    forced = model(body.replace('name="relu" meta{', 'name="relu" meta{quantize=true, '))
    assert by_name(forced) == {"add": QuantPlan(activations=(0, 1), needs_quantized_inputs=True),
                               "relu": QuantPlan(outputs=(0,), needs_quantized_inputs=True)}
    excluded = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv" meta{group="conv-act#0"}\n'
                     '  %y: f32[1,4,8,8] = Relu(%c) name="relu" meta{group="conv-act#0", quantize=false}\n'
                     '  return %y')
    assert by_name(excluded) == {}


# -- sharing: Concat, pass-through chains ----------------------------------------------


def test_concat_inputs_and_output_share_the_output_observer():
    m = model(CONV + '  %c1: f32[1,4,8,8] = Conv(%x, %w) name="conv1"\n'
              '  %c2: f32[1,4,8,8] = Conv(%x, %w) name="conv2"\n'
              '  %y: f32[1,8,8,8] = Concat(%c1, %c2) {axis=1} name="cat"\n  return %y')
    assert by_name(m)["cat"] == QuantPlan(activations=(0, 1), outputs=(0,), inputs_follow_output=(0, 1),
                                          needs_quantized_inputs=True)
    assert leaders(m) == {"x": "x", "c1": "y", "c2": "y", "y": "y"}


def test_concat_input_that_already_follows_keeps_its_leader():
    m = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
              '  %p: f32[1,4,8,8] = MaxPool(%c) {kernel_shape=[1,1]} name="pool"\n'
              '  %y: f32[1,8,8,8] = Concat(%p, %c) {axis=1} name="cat"\n  return %y')
    assert leaders(m) == {"x": "x", "c": "y", "p": "y", "y": "y"}  # p follows c, which follows y
    m2 = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
               '  %p: f32[1,4,8,8] = MaxPool(%c) {kernel_shape=[1,1]} name="pool"\n'
               '  %y: f32[1,8,8,8] = Concat(%c, %p) {axis=1} name="cat"\n  return %y')
    assert leaders(m2) == {"x": "x", "c": "y", "p": "y", "y": "y"}


def test_concat_input_read_by_two_concats_follows_the_first():
    m = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
              '  %d: f32[1,4,8,8] = Conv(%x, %w) name="conv2"\n'
              '  %y1: f32[1,8,8,8] = Concat(%c, %d) {axis=1} name="cat1"\n'
              '  %y2: f32[1,8,8,8] = Concat(%c, %x) {axis=1} name="cat2"\n'
              '  %y3: f32[1,16,8,8] = Concat(%y1, %y2) {axis=1} name="cat3"\n  return %y3')
    # c follows y1 (cat2 must requantize it); x, y1 and y2 follow y3, and so c and d through y1
    assert leaders(m) == {"x": "y3", "c": "y3", "d": "y3", "y1": "y3", "y2": "y3", "y3": "y3"}
    m2 = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
               '  %y1: f32[1,8,8,8] = Concat(%c, %x) {axis=1} name="cat1"\n'
               '  %y2: f32[1,8,8,8] = Concat(%c, %c) {axis=1} name="cat2"\n  return %y1, %y2')
    assert leaders(m2) == {"x": "y1", "c": "y1", "y1": "y1", "y2": "y2"}


def test_pass_through_chain_follows_its_root():
    m = model(CONV + '  const %shape: i64[2] = [1, 256]\n  const %axes: i64[1] = [0]\n'
              '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
              '  %p: f32[1,4,4,4] = MaxPool(%c) {kernel_shape=[2,2], strides=[2,2]} name="pool"\n'
              '  %t: f32[1,4,4,4] = Transpose(%p) {perm=[0,1,3,2]} name="transpose"\n'
              '  %r: f32[1,64] = Reshape(%t, %shape) name="reshape"\n'
              '  %s: f32[64] = Squeeze(%r, %axes) name="squeeze"\n'
              '  %o1: f32[32], %o2: f32[32] = Split(%s) {num_outputs=2} name="split"\n  return %o1, %o2')
    plans = by_name(m)
    assert plans["reshape"] == QuantPlan(activations=(0,), output_follows=((0, 0),), needs_quantized_inputs=True)
    assert plans["split"].output_follows == ((0, 0), (1, 0))
    assert leaders(m) == {"x": "x", "c": "c", "p": "c", "t": "c", "r": "c", "s": "c", "o1": "c", "o2": "c"}


def test_pass_through_of_a_float_value_stays_float():
    m = model('  const %shape: i64[2] = [1, 256]\n'
              '  %r: f32[1,256] = Reshape(%x, %shape) name="reshape"\n'
              '  %y: f32[1,256] = Sigmoid(%r) name="sigmoid"\n  return %y')
    assert by_name(m) == {}


def test_pass_through_input_quantized_by_a_compute_op_reading_it():
    m = model(CONV + '  %p: f32[1,4,8,8] = MaxPool(%x) {kernel_shape=[1,1]} name="pool"\n'
              '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n  return %p, %c')
    assert set(by_name(m)) == {"pool", "conv"}
    assert leaders(m) == {"x": "x", "p": "x", "c": "c"}


def test_gather_shares_data_but_not_of_an_embedding_table():
    m = model('  const %table: f32[3,2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]\n'
              '  %e: f32[4,2] = Gather(%table, %ids) name="embed"\n'
              '  %m: f32[4,4] = MatMul(%e, %h) name="mm"\n'
              '  %g: f32[4,2] = Gather(%m, %ids) {axis=1} name="pick"\n  return %g',
              "%ids: i64[4], %h: f32[2,4]")
    plans = by_name(m)
    assert "embed" not in plans
    assert plans["pick"] == QuantPlan(activations=(0,), output_follows=((0, 0),), needs_quantized_inputs=True)


@pytest.mark.parametrize("attrs, follows", [("{mode=\"nearest\"}", True), ("{mode=\"linear\"}", True),
                                            ("{mode=\"cubic\"}", False)])
def test_resize_shares_unless_it_can_overshoot(attrs, follows):
    m = model(CONV + '  const %scales: f32[4] = [1.0, 1.0, 2.0, 2.0]\n'
              '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
              f'  %y: f32[1,4,16,16] = Resize(%c, none, %scales) {attrs} name="up"\n  return %y')
    plan = by_name(m)["up"]
    assert plan.output_follows == (((0, 0),) if follows else ())
    assert plan.outputs == (() if follows else (0,))


# -- elementwise ops and their heuristics ----------------------------------------------


def test_residual_add_of_a_conv_net_is_quantized():
    m = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
              '  %r: f32[1,4,8,8] = Relu(%c) name="relu"\n'
              '  %d: f32[1,4,8,8] = Conv(%r, %w) name="conv2"\n'
              '  %y: f32[1,4,8,8] = Add(%d, %r) name="add"\n  return %y')
    assert by_name(m)["add"] == QuantPlan(activations=(0, 1), outputs=(0,), needs_quantized_inputs=True)


def test_add_on_a_transformer_residual_stream_stays_float_unless_forced():
    text = (W44 + '  const %g: f32[4] = [1.0, 1.0, 1.0, 1.0]\n'
            '  %q: f32[2,4] = MatMul(%x, %w) name="proj"\n'
            '  %k: f32[2,4] = MatMul(%x, %w) name="proj2"\n'
            '  %s: f32[2,4] = Add(%q, %k) name="residual"{meta}\n'
            '  %y: f32[2,4] = LayerNormalization(%s, %g) name="ln"\n  return %y')
    assert "residual" not in by_name(model(text.replace("{meta}", ""), "%x: f32[2,4]"))
    forced = by_name(model(text.replace("{meta}", " meta{quantize=true}"), "%x: f32[2,4]"))
    assert forced["residual"] == QuantPlan(activations=(0, 1), outputs=(0,), needs_quantized_inputs=True)
    assert "ln" not in forced


def test_add_reading_a_normalization_stays_float():
    """Post-LN: the MatMul reading the LayerNorm output quantizes it; only the stream check keeps the Add float."""
    m = model(W44 + '  const %g: f32[4] = [1.0, 1.0, 1.0, 1.0]\n'
              '  %n: f32[2,4] = LayerNormalization(%x, %g) name="ln"\n'
              '  %h: f32[2,4] = MatMul(%n, %w) name="proj"\n'
              '  %y: f32[2,4] = Add(%n, %h) name="residual"\n  return %y', "%x: f32[2,4]")
    assert set(by_name(m)) == {"proj"}


def test_attention_mask_add_and_its_softmax_stay_float():
    m = model('  %s: f32[2,2] = MatMul(%q, %k) name="scores"\n'
              '  %m: f32[2,2] = Mul(%mask, %big) name="mask_scale"\n'
              '  %a: f32[2,2] = Add(%s, %m) name="masked"\n'
              '  %p: f32[2,2] = Softmax(%a) name="softmax"\n'
              '  %y: f32[2,2] = MatMul(%p, %v) name="context"\n  return %y',
              "%q: f32[2,3], %k: f32[3,2], %v: f32[2,2], %mask: f32[2,2], %big: f32[2,2]")
    assert set(by_name(m)) == {"scores", "context"}


def test_softmax_of_a_quantized_input_is_quantized():
    m = model('  %s: f32[2,2] = MatMul(%q, %k) name="scores"\n'
              '  %p: f32[2,2] = Softmax(%s) name="softmax"\n  return %p', "%q: f32[2,3], %k: f32[3,2]")
    assert by_name(m)["softmax"] == QuantPlan(activations=(0,), outputs=(0,), needs_quantized_inputs=True)


def test_silu_mul_of_two_quantized_activations():
    m = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
              '  %s: f32[1,4,8,8] = Sigmoid(%c) name="sigmoid"\n'
              '  %y: f32[1,4,8,8] = Mul(%c, %s) name="mul"\n  return %y')
    assert by_name(m)["mul"] == QuantPlan(activations=(0, 1), outputs=(0,), needs_quantized_inputs=True)
    assert leaders(m) == {"x": "x", "c": "c", "s": "s", "y": "y"}


def test_elementwise_with_a_constant_operand_stays_float():
    m = model(CONV + '  const %half: f32[] = [0.5]\n  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
              '  %y: f32[1,4,8,8] = Mul(%c, %half) name="mul"\n  %z: f32[1,4,8,8] = Add(%y, %half) name="add"\n'
              '  return %z')
    assert set(by_name(m)) == {"conv"}


def test_pooling_and_activations_get_their_own_parameters():
    m = model(CONV + '  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
              '  %a: f32[1,4,8,8] = LeakyRelu(%c) name="leaky"\n'
              '  %h: f32[1,4,8,8] = HardSwish(%a) name="hswish"\n'
              '  %p: f32[1,4,4,4] = AveragePool(%h) {kernel_shape=[2,2], strides=[2,2]} name="avg"\n'
              '  %y: f32[1,4,1,1] = GlobalAveragePool(%p) name="gap"\n  return %y')
    assert leaders(m) == {"x": "x", "c": "c", "a": "a", "h": "h", "p": "p", "y": "y"}


# -- what stays float ------------------------------------------------------------------


def test_unknown_ops_and_layernorm_stay_float():
    m = model('  const %g: f32[8] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]\n'
              '  %e: f32[1,4,8,8] = Erf(%x) name="erf"\n'
              '  %n: f32[1,4,8,8] = LayerNormalization(%e, %g) name="ln"\n'
              '  %y: f32[1,4,8,8] = example::Custom(%n) name="custom"\n  return %y')
    assert by_name(m) == {}
    assert leaders(m) == {}


def test_integer_values_are_never_quantized():
    m = model('  %s: i64[4] = Shape(%x) name="shape"\n  %d: i64[8] = Concat(%s, %s) {axis=0} name="cat"\n'
              '  %r: i64[8] = Reshape(%d, %d) name="reshape"\n  return %r')
    assert by_name(m) == {}


def test_excluded_node_stays_float():
    m = model(CONV + '  %y: f32[1,4,8,8] = Conv(%x, %w) name="conv" meta{quantize=false}\n  return %y')
    assert by_name(m) == {}


def test_nodes_inside_subgraphs_stay_float():
    m = ir.parse_model(
        "model ir_version=10 opset{ai.onnx=21}\ngraph @g(%c: bool[], %a: f32[2,2], %b: f32[2,2]) {\n"
        "  %y: f32[2,2] = If(%c) {\n"
        "    then_branch=graph @t() {\n      %t: f32[2,2] = MatMul(%a, %b) name=\"inner\"\n      return %t\n    },\n"
        "    else_branch=graph @e() {\n      %e: f32[2,2] = MatMul(%b, %a) name=\"inner2\"\n      return %e\n    }\n"
        "  } name=\"if\"\n  return %y\n}\n")
    assert by_name(m) == {}


# -- registry and purity ---------------------------------------------------------------


def test_user_rule_by_domain_and_duplicates_refused(monkeypatch):
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))

    @rules.register_rule("Custom", domain="example")
    def custom(node, m):
        return QuantPlan(activations=(0,), outputs=(0,))

    m = model('  %y: f32[1,4,8,8] = example::Custom(%x) name="custom"\n  %z: f32[1,4,8,8] = Custom(%y) name="plain"\n'
              '  return %z')
    assert by_name(m) == {"custom": QuantPlan(activations=(0,), outputs=(0,))}
    with pytest.raises(ValueError, match="example::Custom already has a rule"):
        rules.register_rule("Custom", domain="example")(custom)
    with pytest.raises(ValueError, match="op Conv already has a rule: qcompiler.passes.analyses.rules.conv"):
        rules.register_rule("Conv")(custom)


def test_rules_do_not_mutate(torch_exports):
    for exported in torch_exports.values():
        m = ir.load_model(exported.path)
        run(m, "canonicalize,fuse")
        before = ir.print_model(m, weights="inline")
        metas = [(dict(n.meta), [dict(v.meta) for v in n.outputs]) for n in m.graph.nodes]
        for node in m.graph.nodes:
            rule = rules._RULES.get((node.domain, node.op_type))
            if rule is not None:
                rule(node, m)
        rules.quantized_values(m)
        assert ir.print_model(m, weights="inline") == before
        assert [(dict(n.meta), [dict(v.meta) for v in n.outputs]) for n in m.graph.nodes] == metas


def test_torch_models_quantize_their_compute_ops(torch_exports):
    """Every Conv and Gemm gets a plan, and no value inside a fusion group is observed."""
    for exported in torch_exports.values():
        m = run(ir.load_model(exported.path), "canonicalize,fuse")
        plans = rules.plans(m)
        assert all(node in plans for node in m.graph.nodes if node.op_type in ("Conv", "Gemm"))
        for value in rules.quantized_values(m, plans):
            group = value.producer.meta.get("group") if value.producer is not None else None
            if group is not None:
                assert value.is_graph_output() or any(c.meta.get("group") != group for c in value.consumers())


# -- the insert-observers pass ---------------------------------------------------------


CONV_RELU_POOL = CONV + (
    '  %c: f32[1,4,8,8] = Conv(%x, %w, %b) name="conv"\n'
    '  %r: f32[1,4,8,8] = Relu(%c) name="relu"\n'
    '  %p: f32[1,4,4,4] = MaxPool(%r) {kernel_shape=[2,2], strides=[2,2]} name="pool"\n'
    '  %s: f32[1,4,4,4] = Softmax(%p) name="softmax"\n  return %s')


def test_pass_marks_observed_values_and_followers():
    m = run(model(CONV_RELU_POOL), "fuse,insert-observers")
    assert marks(m) == {
        "x": {"observer": "minmax"}, "r": {"observer": "minmax"},
        "p": {"observer_follows": "r"}, "s": {"observer": "minmax"},
    }


def test_pass_options_go_to_the_observers_taking_them():
    m = run(model(CONV_RELU_POOL), "fuse,insert-observers{method=percentile,percentile=99.9}")
    observers = {name: mark.get("observer") for name, mark in marks(m).items()}
    assert observers == {"x": "percentile", "r": "percentile", "p": None, "s": "percentile"}
    assert "percentile=99.9" in marks(m)["x"]["observer_options"]
    assert "observer_options" not in marks(run(model(CONV_RELU_POOL)))["x"]  # minmax takes none of them


def test_overrides_by_op_type_node_and_graph_input():
    overrides = Overrides(by_op_type={"Softmax": {"observer": "entropy"}, "Relu": {"observer": "mse"}},
                          by_node={"relu": {"observer": "percentile", "percentile": 99.0},
                                   "x": {"observer": "ema-minmax"}})
    m = run(model(CONV_RELU_POOL), "apply-overrides,fuse,insert-observers", overrides)
    got = marks(m)
    assert (got["x"]["observer"], got["r"]["observer"], got["s"]["observer"]) == ("ema-minmax", "percentile", "entropy")
    assert "percentile=99.0" in got["r"]["observer_options"]


def test_graph_input_takes_its_first_readers_override():
    overrides = Overrides(by_node={"conv": {"observer": "mse"}})
    m = run(model(CONV_RELU_POOL), "apply-overrides,fuse,insert-observers", overrides)
    assert marks(m)["x"]["observer"] == "mse"
    assert marks(m)["r"]["observer"] == "minmax"  # made by relu, not by conv


def test_exclude_and_force_become_node_overrides():
    body = CONV + ('  %c: f32[1,4,8,8] = Conv(%x, %w) name="conv"\n'
                   '  %n: f32[1,4,8,8] = Conv(%x, %w) name="conv2"\n'
                   '  %a: f32[1,4,8,8] = Add(%c, %n) name="add"\n'
                   '  %y: f32[1,4,8,8] = Add(%a, %x) name="add2"\n  return %y')
    m = run(model(body), "apply-overrides,insert-observers", Overrides(exclude=("conv2",), force=("add2",)))
    assert set(marks(m)) == {"x", "c", "a", "y"}  # add reads the float conv2 so stays float; add2 is forced
    assert [n.meta.get("quantize") for n in m.graph.nodes] == [None, False, None, True]
    assert "quantize=false" in ir.print_model(m)


def test_rerun_replaces_marks_and_reports_no_change():
    m = run(model(CONV_RELU_POOL), "fuse,insert-observers")
    pm = PassManager("insert-observers")
    assert not pm.run(m, PassContext()).changed
    next(iter(m.graph.nodes)).meta["quantize"] = False  # conv: its whole group goes float
    assert pm.run(m, PassContext()).changed
    assert marks(m) == {}


def test_statistics_count_values_per_observer():
    m = run(model(CONV_RELU_POOL), "fuse")
    pass_ = InsertObservers()
    assert pass_.run(m, PassContext())
    assert dict(pass_.stats) == {"minmax": 3, "follows": 1}


@pytest.mark.parametrize("sections, message", [
    ({"exclude": ("conv",), "force": ("conv",)}, "both excluded and forced"),
    ({"by_op_type": {"Conv": {"methd": "minmax"}}}, "unknown key 'methd'"),
    ({"by_op_type": {"Conv": {"observer": "percentile", "percentile": 120.0}}}, "percentile must be in"),
    ({"by_node": {"conv": {"observer": "no-such-observer"}}}, "unknown observer"),
    ({"by_regex": {"conv[": {"precision": "fp16"}}}, "not a regular expression"),
])
def test_bad_overrides_are_refused_when_made(sections, message):
    with pytest.raises(ValueError, match=message):
        Overrides(**sections)


@pytest.mark.parametrize("overrides", [Overrides(by_node={"nope": {"observer": "minmax"}}),
                                       Overrides(exclude=("nope",))])
def test_overrides_naming_what_the_model_lacks_fail_before_anything_changes(overrides):
    m = model(CONV_RELU_POOL)
    with pytest.raises(PassError, match=r"names \['nope'\], which the model does not have"):
        run(m, "apply-overrides,insert-observers", overrides)
    assert marks(m) == {} and all(not n.meta for n in m.graph.nodes)


def test_overrides_without_apply_overrides_in_the_pipeline_are_refused():
    with pytest.raises(PipelineError, match="no apply-overrides step"):
        run(model(CONV_RELU_POOL), "insert-observers", Overrides(exclude=("conv",)))


def test_unknown_observer_is_refused_as_the_pipeline_is_parsed():
    with pytest.raises(PipelineError, match="column 18: pass 'insert-observers': unknown observer 'no-such-observer'"):
        parse_pipeline("insert-observers{method=no-such-observer}")


# the .qir cases under tests/passes/insert-observers print no value meta; their marks are checked here
QIR_MARKS = {
    "conv_relu_group.qir": {
        "x": {"observer": "minmax"}, "r": {"observer": "minmax"}, "p": {"observer_follows": "r"},
        "f": {"observer_follows": "r"},
    },
    "percentile.qir": {name: {"observer": "percentile", "observer_options": "percentile=99.9,bins=512"}
                       for name in ("x", "c1", "c2")},
    "float_only.qir": {},
    "transformer_block.qir": {
        **{name: {"observer": "minmax"} for name in ("n", "q", "k", "v", "s", "p", "a")},
        "kt": {"observer_follows": "k"},
    },
}


@pytest.mark.parametrize("name", sorted(QIR_MARKS))
def test_qir_case_marks(name):
    path = TEXT_CASES / name
    pipeline = next(line.split("RUN:", 1)[1].strip() for line in path.read_text().splitlines()
                    if line.startswith("// RUN:"))
    assert marks(run(ir.parse_file(path), pipeline)) == QIR_MARKS[name]


def test_every_qir_case_has_its_marks_checked():
    assert sorted(p.name for p in TEXT_CASES.glob("*.qir")) == sorted(QIR_MARKS)
