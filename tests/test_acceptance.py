"""Task measures: each kind of output is judged by what a reader of it decides, checked against numpy."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from helpers import run_onnx
from onnx import TensorProto, helper
from torch import nn

import qcompiler
from qcompiler import ir
from qcompiler.acceptance import Measure, TaskSums, holds, measure_of, measures
from qcompiler.auto import auto
from qcompiler.passes.infra.progress import silenced

ROWS = 24


class MultiHead(nn.Module):
    """One conv trunk, five outputs of five kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classes = nn.Linear(8 * 16 * 16, 5)
        self.steps = nn.Linear(8 * 16, 10)
        self.score = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor):
        f = self.trunk(x)
        steps = f.permute(0, 3, 1, 2).reshape(x.shape[0], 16, 8 * 16)  # one step per image column, as a CRNN reads
        return (self.classes(f.flatten(1)), torch.log_softmax(self.steps(steps), dim=-1),
                torch.sigmoid(4 * self.score(f)), f.mean(dim=(2, 3)), f)


NAMES = ["logits", "steps", "score", "embedding", "features"]
EXPECTED = {"logits": Measure("top1", 1), "steps": Measure("argmax", 2), "score": Measure("decision"),
            "embedding": Measure("cosine", -1), "features": Measure("cosine")}


@pytest.fixture(scope="module")
def multi_head() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    module = MultiHead().eval()
    rng = np.random.default_rng(0)
    calib, held_out = (rng.standard_normal((ROWS, 1, 16, 16)).astype(np.float32) for _ in range(2))
    buffer = io.BytesIO()
    with silenced(), torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(calib[:1]),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=NAMES,
                          dynamic_axes={name: {0: "batch"} for name in ["x", *NAMES]})
    return onnx.load_from_string(buffer.getvalue()), calib, held_out


def test_each_output_kind_is_read_from_the_float_graph(multi_head):
    proto, _, _ = multi_head
    assert measures(ir.load_model(proto)) == EXPECTED


def _numpy_figures(ref: list[np.ndarray], quant: list[np.ndarray]) -> dict[str, float]:
    """Each measure computed directly: the independent reference for compile's figures."""
    logits, steps, score, embedding, features = zip(ref, quant)
    def cosines(a, b):
        return np.sum(a * b, axis=1) / np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
    return {
        "logits": np.mean(logits[0].argmax(1) == logits[1].argmax(1)),
        "steps": np.mean(steps[0].argmax(2) == steps[1].argmax(2)),
        "score": np.mean((score[0] > 0.5) == (score[1] > 0.5)),
        "embedding": np.mean(cosines(*(e.astype(np.float64) for e in embedding))),
        "features": np.mean(cosines(*(f.reshape(ROWS, -1).astype(np.float64) for f in features))),
    }


def test_compile_reports_each_outputs_measure_and_figure(multi_head):
    proto, calib, held_out = multi_head
    result = qcompiler.compile(proto, calib, eval=held_out)
    got = {m.name: m for m in result.report.outputs}
    assert {name: m.measure for name, m in got.items()} == {n: EXPECTED[n].describe() for n in NAMES}
    want = _numpy_figures(run_onnx(proto, {"x": held_out}), run_onnx(ir.to_onnx(result.model), {"x": held_out}))
    for name in ("logits", "steps", "score"):  # one flipped decision may differ between thread counts
        compared = {"logits": ROWS, "steps": ROWS * 16, "score": ROWS * 256}[name]
        assert got[name].measure_value == pytest.approx(want[name], abs=1.5 / compared), name
    for name in ("embedding", "features"):
        assert got[name].measure_value == pytest.approx(want[name], abs=1e-5), name
    summary = "\n".join(result.report.summary())
    assert "argmax agreement per position (axis 2)" in summary and "mean cosine per sample" in summary


def test_auto_judges_every_output_by_its_measure(multi_head):
    proto, calib, held_out = multi_head
    result = auto(proto, calib, eval=held_out, tolerance=5.0)
    static = next(a for a in result.attempts if a.rung == "static")
    figures = {m.name: m.measure_value for m in static.result.report.outputs}
    score_error = 10 ** (-next(m for m in static.result.report.outputs if m.name == "score").sqnr_db / 20)
    assert static.meets == (all(value >= 0.95 for value in figures.values()) and score_error <= 1.25)
    for name in NAMES:
        assert f"{name}: {EXPECTED[name].describe()}" in static.accuracy
    assert result.tolerance == ("5% (top-1 agreement >= 95%, argmax agreement per position (axis 2) >= 95%, "
                                "decision agreement (p > 0.5) >= 95%, mean cosine of last-axis vectors >= 0.95, "
                                "mean cosine per sample >= 0.95)")


def _graph_output(nodes, output: str, shape, dtype=TensorProto.FLOAT, inits=()) -> ir.Value:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6])],
                              [helper.make_tensor_value_info(output, dtype, shape)], list(inits))
    model = ir.load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model.graph.outputs[0]


def test_kinds_look_past_layout_ops_and_bias_adds():
    w = onnx.numpy_helper.from_array(np.ones((6, 3), np.float32), "w")
    b = onnx.numpy_helper.from_array(np.ones(3, np.float32), "b")
    shape = onnx.numpy_helper.from_array(np.array([8, 3], np.int64), "shape")
    head = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["biased"]),
            helper.make_node("Reshape", ["biased", "shape"], ["y"])]
    assert measure_of(_graph_output(head, "y", [8, 3], inits=(w, b, shape))) == Measure("top1", 1)
    hidden = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])]
    assert measure_of(_graph_output(hidden, "y", [2, 4, 3], inits=(w, b))) == Measure("cosine", -1)
    pooled = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)]
    assert measure_of(_graph_output(pooled, "y", [2, 6])) == Measure("cosine", -1)  # an embedding, not classes
    steps = [helper.make_node("Softmax", ["x"], ["p"], axis=1), helper.make_node("Identity", ["p"], ["y"])]
    assert measure_of(_graph_output(steps, "y", [2, 4, 6])) == Measure("argmax", 1)
    ids = [helper.make_node("ArgMax", ["x"], ["y"], axis=2)]
    assert measure_of(_graph_output(ids, "y", [2, 4, 1], dtype=TensorProto.INT64)) == Measure("exact")


def test_sums_stream_and_count_a_broken_vector_as_unlike():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((6, 5, 4))
    quant = ref + 0.3 * rng.standard_normal(ref.shape)
    quant[2, 1, 0] = np.nan
    whole, split = TaskSums("h", Measure("cosine", -1)), TaskSums("h", Measure("cosine", -1))
    whole.add(ref, quant)
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        split.add(ref[rows], quant[rows])
    r, q = ref.reshape(-1, 4), quant.reshape(-1, 4)
    want = np.nan_to_num(np.sum(r * q, 1) / np.linalg.norm(r, axis=1) / np.linalg.norm(q, axis=1), nan=0.0)
    assert whole.value() == pytest.approx(want.mean(), rel=1e-12)
    assert split.value() == pytest.approx(whole.value(), rel=1e-12)
    scalars = TaskSums("p", Measure("cosine", -1))  # one-element vectors: compared as one vector
    scalars.add(ref[:, :, :1], 2 * ref[:, :, :1])
    assert scalars.value() == pytest.approx(1.0)


def test_probabilities_need_their_decisions_and_a_bounded_error():
    decision = Measure("decision")
    assert holds(decision, 0.995, 15.0, 1.0) == (True, "")
    assert holds(decision, 0.98, 30.0, 1.0)[0] is False
    meets, why = holds(decision, 1.0, 8.0, 1.0)  # decisions agree, but the map is 40% off
    assert not meets and "relative RMS error 39.8% > 25%" in why
    assert holds(Measure("cosine", -1), 0.989, 40.0, 1.0) == (False, "mean cosine of last-axis vectors 0.98900 < 0.99000")
