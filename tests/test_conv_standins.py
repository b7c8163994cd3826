"""tools/conv_standins.py: tiny stand-ins run in ONNX Runtime as in torch, and the task measures count right."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from qcompiler.ir.evaluate import open_session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import conv_standins as standins  # noqa: E402
from golden_models import EVAL_SEED, export  # noqa: E402

# ops each graph must hold for the stand-in to be what its docstring says (rule 1)
OPS = {
    "mobilenetv3": {"HardSwish", "HardSigmoid", "GlobalAveragePool", "Mul", "Add", "Gemm"},
    "db-detector": {"Resize", "Concat", "ConvTranspose", "Sigmoid", "Add"},
    "crnn": {"MaxPool", "LSTM", "Squeeze", "Transpose", "MatMul"},
}
SHAPES = {"mobilenetv3": (3, len(standins.SHAPES)), "db-detector": (3, 1, 64, 64), "crnn": (3, 32, 11)}


@pytest.mark.parametrize("name", list(standins.TASKS))
def test_tiny_standin_runs_in_onnx_runtime_as_in_torch(name):
    task = standins.TASKS[name]
    module, _ = standins.train(name, standins.SIZES["tiny"][name])
    inputs, _ = task.samples(3, EVAL_SEED)
    with torch.no_grad():
        model = export(module, inputs, task.output)
        want = module(torch.from_numpy(inputs)).numpy()
    ops = {node.op_type for node in model.graph.node}
    assert OPS[name] <= ops, sorted(ops)
    norms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]  # folded into every Conv
    assert len(norms) == (1 if name == "db-detector" else 0)  # but not into the head's ConvTranspose
    if name == "mobilenetv3":  # depthwise: a Conv with one group per channel
        groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        assert max(groups) > 1
    if name == "db-detector":
        modes = {a.s for n in model.graph.node if n.op_type == "Resize" for a in n.attribute if a.name == "mode"}
        assert modes == {b"nearest", b"linear"}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    got = open_session(model.SerializeToString()).run(None, {"x": inputs})[0]  # batch 3 through the dynamic axis
    assert got.shape == SHAPES[name]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_prepare_caches_model_data_and_labels(tmp_path):
    case = standins.prepare("crnn", tmp_path, 4, 5, size="tiny")
    with np.load(case.calib) as calib, np.load(case.eval) as evaluate:
        assert calib["x"].shape == (4, 1, 32, 128) and evaluate["x"].shape == (5, 1, 32, 128)
        assert not np.array_equal(calib["x"][:4], evaluate["x"][:4])
    labels = standins.load_labels(case)
    lengths = (labels != standins.BLANK).sum(axis=1)
    assert labels.shape == (5, standins.DIGITS_PER_LINE[1]) and lengths.min() >= standins.DIGITS_PER_LINE[0]
    stamp = case.model.stat().st_mtime_ns
    again = standins.prepare("crnn", tmp_path, 4, 5, size="tiny")
    assert again == case and case.model.stat().st_mtime_ns == stamp  # not trained again
    onnx.checker.check_model(str(case.model))


def test_shapes_and_boxes_have_their_labels():
    images, labels = standins.shape_images(16, 3)
    assert images.shape == (16, 3, 64, 64) and set(labels) <= set(range(len(standins.SHAPES)))
    scenes, masks = standins.text_box_images(6, 3)
    assert scenes.shape == (6, 3, 64, 64) and masks.shape == (6, 1, 64, 64)
    for scene, mask in zip(scenes, masks):
        assert 0 < mask.mean() < 0.9
        inside, outside = scene[:, mask[0] > 0], scene[:, mask[0] == 0]
        assert inside.std() > outside.std()  # ink on paper varies more than the smooth background


def test_ctc_greedy_collapses_repeats_then_drops_blanks():
    best = np.array([[0, 3, 3, 0, 3, 5, 5, 0, 0, 2], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    logits = np.eye(11)[best]  # [2, 10, 11] one-hot: the argmax is `best`
    assert standins.ctc_greedy(logits) == [[3, 3, 5, 2], []]


def test_character_accuracy_counts_edits():
    assert standins.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert standins.edit_distance(list(b"kitten"), list(b"sitting")) == 3
    assert standins.edit_distance([], [4, 5]) == 2
    # one substitution in 4 characters, one deletion in 2: 2 edits over 6 reference characters
    assert standins.character_accuracy([[1, 2, 9, 4], [7]], [[1, 2, 3, 4], [7, 8]]) == pytest.approx(1 - 2 / 6)


def test_mask_f1_of_known_masks():
    truth = np.zeros((1, 1, 4, 4), bool)
    truth[..., :2, :2] = True  # 4 pixels
    predicted = np.zeros_like(truth)
    predicted[..., :1, :] = True  # 4 pixels, 2 of them in truth
    assert standins.mask_f1(predicted, truth) == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    assert standins.mask_f1(truth, truth) == 1.0 and standins.mask_f1(~truth, truth) == 0.0
    assert standins.mask_f1(np.zeros_like(truth), np.zeros_like(truth)) == 1.0


def test_score_against_float_and_labels():
    float_logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    quantized = float_logits.copy()
    quantized[2] = [2.0, 0.0, 1.0]  # flips one argmax
    scores = standins.score("mobilenetv3", quantized, float_logits, np.array([0, 1, 2, 1]))
    assert scores == {"vs_float": 0.75, "vs_labels": 0.5}
    lines = np.eye(11)[np.array([[0, 4, 4, 0, 4], [2, 0, 3, 3, 0]])]
    labels = np.array([[4, 4, 0], [2, 3, 1]])
    scores = standins.score("crnn", lines, lines, labels)
    assert scores == {"vs_float": 1.0, "vs_labels": pytest.approx(1 - 1 / 5)}
