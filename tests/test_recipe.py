"""Recipes: TOML into pass options and overrides, with errors that name the file, section and key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from qcompiler import ir, passes
from qcompiler.passes import Overrides, Target
from qcompiler.recipe import Recipe, RecipeError, apply_pass_options, overrides_toml

from helpers import VNNI_CPU

RECIPE = """
target = "tensorrt"
pipeline = "int8"

[passes.insert-observers]
method = "percentile"
percentile = 99.9

[passes.fold-weights]
per_channel = false

[overrides]
exclude = ["head"]
force = ["residual"]

[overrides.op_type.Softmax]
observer = "minmax"

[overrides.node.conv1]
observer = "entropy"
bins = 1024
activations = "int16"
"""


def mark(model: ir.Model, recipe: Recipe) -> int:
    """Run apply-overrides with the recipe's overrides; how many nodes it marked."""
    step = passes.get_pass("apply-overrides")()
    step.run(model, passes.PassContext(overrides=recipe.overrides))
    return step.stats["nodes"]


def write(tmp_path, text: str):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_recipe_reads_every_section(tmp_path):
    recipe = Recipe.load(write(tmp_path, RECIPE))
    assert (recipe.target, recipe.pipeline) == ("tensorrt", "int8")
    assert recipe.pass_options == {"insert-observers": {"method": ["percentile"], "percentile": ["99.9"]},
                                   "fold-weights": {"per_channel": ["false"]}}
    assert recipe.overrides == Overrides(exclude=("head",), force=("residual",),
                                         by_op_type={"Softmax": {"observer": "minmax"}},
                                         by_node={"conv1": {"observer": "entropy", "bins": 1024, "activations": "int16"}})


def test_pass_options_fill_steps_but_pipeline_text_wins():
    pipeline = passes.parse_pipeline("canonicalize,int8,fold-weights{per_channel=true}")
    options = {"fold-weights": {"per_channel": ["false"], "reduce_range": ["true"]},
               "insert-observers": {"method": ["mse"]}}
    merged = apply_pass_options(pipeline, options)
    assert str(merged) == ("canonicalize,legalize-opset,freeze-weight-inputs,apply-overrides,canonicalize,fuse,"
                           "insert-observers{method=mse},calibrate,place-qdq,"
                           "fold-weights{per_channel=false,reduce_range=true},quantize-embeddings,cleanup,"
                           "fold-weights{per_channel=true,reduce_range=true}")
    # the merged text is itself a valid pipeline that prints back the same
    assert str(passes.parse_pipeline(str(merged))) == str(merged)


def test_activation_overrides_mark_nodes():
    graph = ir.Graph("g")
    x = graph.add_input(ir.Value("x", ir.TensorType(ir.DType.FLOAT, (1, 4))))
    first = graph.append(ir.Node("Relu", [x], [ir.Value("a")], name="conv1"))
    last = graph.append(ir.Node("Softmax", [first.outputs[0]], [ir.Value("b")], name="sm"))
    graph.set_outputs([last.outputs[0]])
    model = ir.Model(graph, {"": 17})
    recipe = Recipe.from_dict({"overrides": {"op_type": {"Softmax": {"activations": "uint16"}},
                                             "node": {"conv1": {"activations": "int16"}}}})
    assert mark(model, recipe) == 2
    assert [n.meta.get("activations") for n in graph.nodes] == ["int16", "uint16"]


def test_precision_scheme_and_regex_overrides_mark_nodes_by_precedence():
    graph = ir.Graph("g")
    value = graph.add_input(ir.Value("x", ir.TensorType(ir.DType.FLOAT, (1, 4))))
    for name in ("enc/0/mm", "enc/1/mm", "head"):
        value = graph.append(ir.Node("Relu", [value], [ir.Value(name + "_out")], name=name)).outputs[0]
    graph.set_outputs([value])
    model = ir.Model(graph, {"": 17})
    recipe = Recipe.from_dict({"overrides": {
        "op_type": {"Relu": {"precision": "fp16", "observer": "minmax"}},
        "node_regex": {"enc/.*/mm": {"precision": "w8a16", "scheme": "per-tensor", "observer": "mse"}},
        "node": {"enc/1/mm": {"precision": "fp32"}},
    }})
    assert mark(model, recipe) == 3
    marks = [(n.meta["precision"], n.meta.get("weight_scheme")) for n in graph.nodes]
    assert marks == [("w8a16", "per-tensor"), ("fp32", "per-tensor"), ("fp16", None)]
    assert [recipe.overrides.settings(n).get("observer") for n in graph.nodes] == ["mse", "mse", "minmax"]
    assert mark(model, Recipe.from_dict({"overrides": {"node_regex": {"enc": {"precision": "fp32"}}}})) == 0


def test_overrides_toml_reads_back_as_a_recipe_pinning_the_same_levels():
    graph = ir.Graph("g")
    x = graph.add_input(ir.Value("x", ir.TensorType(ir.DType.FLOAT, (1, 4))))
    conv = graph.append(ir.Node("Relu", [x], [ir.Value("a")], name='odd "name"/0', meta={"group": "g#0",
                                                                                        "precision": "fp16"}))
    act = graph.append(ir.Node("Relu", [conv.outputs[0]], [ir.Value("b")], name="act",
                               meta={"group": "g#0", "precision": "fp16"}))
    graph.set_outputs([act.outputs[0]])
    text = overrides_toml(ir.Model(graph, {"": 17}), "chosen by assign-precision\nbudget: SQNR >= 25 dB")
    assert text.startswith("# chosen by assign-precision\n# budget: SQNR >= 25 dB\n")
    recipe = Recipe.from_dict(tomllib.loads(text))
    assert recipe.overrides.by_node == {'odd "name"/0': {"precision": "fp16"}}  # the group's head stands for the group


@pytest.mark.parametrize("text, message", [
    ('colour = "red"', "unknown key 'colour'"),
    ("[passes.fold-weight]\nper_channel = true", "[passes.fold-weight]: unknown pass 'fold-weight'; did you mean 'fold-weights'?"),
    ("[passes.fold-weights]\nchannels = 3", "[passes.fold-weights]: pass 'fold-weights' has no option 'channels'"),
    ('[passes.fold-weights]\nper_channel = "yes"', "option 'per_channel' of pass 'fold-weights': expected true or false"),
    ("[overrides.node.c1]\nactivations = \"int4\"", "[overrides.node.c1] activations: 'int4' is not one of"),
    ("[overrides.node.c1]\nobserver = \"maxmin\"", "[overrides.node.c1] observer: unknown observer 'maxmin'"),
    ("[overrides.node.c1]\nbits = 4\ncolour = 1", "unknown key 'colour' in [overrides.node.c1]"),
    ("[overrides.node.c1]\nprecision = \"int4\"", "[overrides.node.c1] precision: 'int4' is not one of int8, dynamic, w8a16, fp16, fp32"),
    ("[overrides.node.c1]\nscheme = \"per-row\"", "scheme: 'per-row' is not one of per-channel, per-tensor"),
    ("[overrides.node_regex.\"conv(\"]\nprecision = \"fp16\"", "[overrides.node_regex.conv(]: not a regular expression"),
    ("[overrides]\nexclude = \"head\"", "[overrides] exclude must be a list of node names"),
    ("[overrides.op_type.Conv]\nalgorithms = [\"adaroun\"]",
     "[overrides.op_type.Conv] algorithms: 'adaroun' is not one of adaquant, adaround, bias-correct, "),
    ("[overrides.node.c1]\nalgorithms = \"adaround\"", "[overrides.node.c1] algorithms must be a list of pass names"),
    ("target = [", "not valid TOML"),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        Recipe.load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("machine, flags, reduce", [
    ("x86_64", frozenset({"avx2", "fma"}), True),
    ("x86_64", frozenset({"avx2", "avx512_vnni"}), False),
    ("x86_64", frozenset({"avx2", "avx_vnni"}), False),
    ("aarch64", frozenset({"asimddp"}), False),
    ("x86_64", frozenset(), False),
])
def test_reduce_range_follows_the_cpu(machine, flags, reduce):
    advice, why = Target.named("ort-cpu", flags=flags, machine=machine).reduce_range
    assert advice is reduce and why


def test_an_unknown_observer_in_the_pass_options_fails_before_any_pass_runs(tmp_path, capsys):
    from qcompiler.cli import main

    path = write(tmp_path, '[passes.insert-observers]\nmethod = "bogus"\n')
    golden = Path(__file__).resolve().parent.parent / "golden" / "mlp"
    code = main(["compile", str(golden / "model.onnx"), "--calib", str(golden / "calib.npz"), "-o",
                 str(tmp_path / "out.onnx"), "--recipe", str(path), "--crash-dir", str(tmp_path / "crash")])
    err = capsys.readouterr().err
    assert code == 1 and err == f"qc: error: {path}: [passes.insert-observers]: pass 'insert-observers': unknown observer 'bogus'\n"
    assert not (tmp_path / "crash").exists() and not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("mode", ["static", "dynamic", "int4", "fp16"])
def test_an_excluded_node_stays_float_in_every_mode(mode):
    import qcompiler

    golden = Path(__file__).resolve().parent.parent / "golden" / "mlp"
    recipe = {"overrides": {"exclude": ["/head/Gemm"]}}
    result = qcompiler.compile(golden / "model.onnx", golden / "calib.npz", mode=mode, recipe=recipe)
    (head,) = [n for n in result.model.graph.nodes if n.name == "/head/Gemm"]
    assert head.op_type == "Gemm" and head.inputs[1].is_const and head.inputs[1].const.dtype == np.float32
    assert head.inputs[0].producer is None or head.inputs[0].producer.op_type != "DequantizeLinear"
    others = [n for n in result.model.graph.nodes if n.name != "/head/Gemm" and n.op_type not in ("Relu", "Cast")]
    assert any(n.op_type not in ("Gemm", "MatMul") or not n.inputs[1].is_const or n.inputs[1].const.dtype != np.float32
               for n in others), "the rest of the model is still quantized"


def test_an_exclude_naming_no_node_of_the_model_is_refused():
    import qcompiler

    golden = Path(__file__).resolve().parent.parent / "golden" / "mlp"
    with pytest.raises(passes.PassError, match=r"apply-overrides.* cannot run: \[overrides\] exclude names \['nope'\], "
                       r"which the model does not have"):
        qcompiler.compile(golden / "model.onnx", golden / "calib.npz", mode="dynamic",
                          recipe={"overrides": {"exclude": ["nope"]}})


def test_an_algorithm_the_pipeline_does_not_run_is_refused():
    import qcompiler

    golden = Path(__file__).resolve().parent.parent / "golden" / "mlp"
    with pytest.raises(passes.PassError, match=r"\[overrides.op_type.Gemm\] algorithms names adaround, which the "
                       r"pipeline does not run after apply-overrides"):
        qcompiler.compile(golden / "model.onnx", golden / "calib.npz",
                          recipe={"overrides": {"op_type": {"Gemm": {"algorithms": ["adaround"]}}}})


def test_the_recipe_picks_accuracy_algorithms_per_op_type_and_per_node():
    """int8-equalized with bias-correct left out for Convs but one: the others store the biases of the same
    pipeline without bias-correct, the one and the Gemm head those of int8-equalized."""
    import qcompiler

    golden = Path(__file__).resolve().parent.parent / "golden" / "resnet_like"
    picked = "/features/features.4/body/body.0/Conv"
    recipe = {"overrides": {"op_type": {"Conv": {"algorithms": ["equalize"]}},
                            "node": {picked: {"algorithms": ["equalize", "bias-correct"]}}}}
    everything = passes.registered_pipelines()["int8-equalized"]
    runs = {name: qcompiler.compile(golden / "model.onnx", golden / "calib.npz", pipeline=pipeline, recipe=r)
            for name, pipeline, r in (("picked", everything, recipe), ("all", everything, None),
                                      ("none", everything.replace(",bias-correct", ""), None))}
    stats = {name: {record.name: record.stats for record in result.report.passes} for name, result in runs.items()}
    corrected = stats["picked"]["bias-correct"]
    assert corrected["not_chosen"] == 7 and corrected["corrected"] + corrected.get("exact", 0) == 2
    assert stats["picked"]["equalize"]["pairs"] == stats["all"]["equalize"]["pairs"] > 0

    def biases(result) -> dict[str, np.ndarray]:
        return {n.name: n.inputs[2].producer.inputs[0].const for n in result.model.graph.nodes
                if n.op_type in ("Conv", "Gemm") and len(n.inputs) > 2 and n.inputs[2] is not None}

    picked_biases, all_biases, none_biases = (biases(runs[name]) for name in ("picked", "all", "none"))
    for name, bias in picked_biases.items():
        want = all_biases[name] if name in (picked, "/head/Gemm") else none_biases[name]
        np.testing.assert_array_equal(bias, want, err_msg=name)
    assert not np.array_equal(all_biases[picked], none_biases[picked])



HEAD = "legalize-opset,freeze-weight-inputs,apply-overrides,canonicalize,fuse"


@pytest.mark.parametrize("case, with_it, without_it, options", [
    ("resnet_like", "int8-ranges", "int8", {"choose-ranges": {"top": 4}}),
    ("resnet_like", "int8-adaround", f"{HEAD},insert-observers,calibrate,bias-correct,place-qdq,fold-weights,"
                                     "quantize-embeddings,cleanup", {"adaround": {"iterations": 20, "samples": 16}}),
    ("resnet_like", "int8-adaquant", "int8", {"adaquant": {"iterations": 20, "samples": 16}}),
    ("transformer_block", "int8-smooth", "int8", {}),
    ("mlp", f"{HEAD},cluster-weights{{min_size=16}},cleanup", f"{HEAD},cleanup", {}),
])
def test_an_algorithm_the_recipe_gives_no_node_changes_nothing(case, with_it, without_it, options):
    """No node's `algorithms` names the pipeline's algorithm (bias-correct, where it runs too, stays): the
    stored constants are those of the pipeline without it, and not those of the pipeline alone."""
    import qcompiler

    golden = Path(__file__).resolve().parent.parent / "golden" / case
    kept = ["bias-correct"] if "bias-correct" in passes.parse_pipeline(with_it).pass_names() else []
    picked = {"passes": options, "overrides": {"node_regex": {".*": {"algorithms": kept}}}}

    def constants(pipeline, recipe) -> list[tuple[str, bytes]]:
        model = qcompiler.compile(golden / "model.onnx", golden / "calib.npz", pipeline=pipeline, recipe=recipe,
                                  target=VNNI_CPU).model  # choose-ranges' gains are measured on full-range codes
        return sorted((v.name, v.const.tobytes()) for v in model.graph.all_values() if v.is_const)

    assert constants(with_it, picked) == constants(without_it, None)
    assert constants(with_it, {"passes": options}) != constants(without_it, None)
