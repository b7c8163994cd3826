"""canonicalize on real exports: ONNX Runtime gives the same outputs, and the graphs shrink.

Torch exports carry Constant nodes and Shape->Gather->Unsqueeze->Concat->Reshape chains;
the ONNX light models (IR version 3) build their weights with ConstantOfShape from
input defaults, which fold up to the size guard.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from helpers import random_feeds, run_onnx
from test_roundtrip import LIGHT_DIR, LIGHT_MODELS
from torch_models import MODEL_NAMES

from qcompiler import ir
from qcompiler.passes import PassContext, PassManager, Verifier, get_pass

SHRINKING = ("attention", "attention_mha", "resize_concat_split", "lstm", "symbolic_dims")  # Constant, Identity, Shape
GUARD = get_pass("canonicalize").Options().max_folded_elements


def canonicalize(model: ir.Model) -> bool:
    return PassManager("canonicalize").run(model, PassContext(instruments=[Verifier()])).changed


def assert_same_results(original: onnx.ModelProto | str, model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    proto = ir.to_onnx(model)
    onnx.checker.check_model(proto)
    want, got = run_onnx(original, feeds), run_onnx(proto, feeds)
    assert len(want) == len(got)
    for expected, actual in zip(want, got):
        assert expected.dtype == actual.dtype and expected.shape == actual.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph.all_nodes()]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_model(name, torch_exports):
    exported = torch_exports[name]
    model = ir.load_model(exported.path)
    before = ops(model)
    changed = canonicalize(model)
    after = ops(model)
    assert_same_results(str(exported.path), model, exported.feeds)
    assert changed or after == before
    assert not {"Constant", "Identity"} & set(after)
    if name in SHRINKING:
        assert len(after) < len(before)
    assert not canonicalize(model), "a second run finds nothing left to do"


def test_static_shape_chains_fold_away(torch_exports):
    model = ir.load_model(torch_exports["lstm"].path)
    canonicalize(model)
    assert not {"Shape", "Gather", "Unsqueeze", "Expand"} & set(ops(model))


def test_symbolic_dims_survive(torch_exports):
    model = ir.load_model(torch_exports["symbolic_dims"].path)
    canonicalize(model)
    (x,), (y,) = model.graph.inputs, model.graph.outputs
    assert x.shape[:2] == y.shape[:2] == ("batch", "seq")
    assert "Shape" in ops(model), "shapes of symbolic dims are only known at run time"


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model(name):
    path = LIGHT_DIR / name
    model = ir.load_model(path)
    generators = ops(model).count("ConstantOfShape")
    canonicalize(model)
    assert_same_results(str(path), model, random_feeds(str(path)))
    kept = [n for n in model.graph.nodes if n.op_type == "ConstantOfShape"]
    assert len(kept) < generators
    assert all(math.prod(n.outputs[0].shape) > GUARD for n in kept), "only tensors above the guard stay generated"
    assert not canonicalize(model)
