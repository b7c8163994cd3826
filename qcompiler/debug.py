"""Where a quantized model's error comes from: every value compared with its float original.

1. Pairing. A model compiled by qcompiler carries, in metadata `qcompiler.float_values`,
   the float-model name of every float activation that survived the passes (passes keep
   the same `ir.Value` objects, so `record_float_names` pairs them by identity). A
   quantized model without that map (made by another tool, e.g. ONNX Runtime's
   `quantize_static`) pairs values of equal names; the result says which way was used.
   Only float tensors of the main graphs pair (no constants, no subgraph values), and a
   pair whose static shapes differ is dropped.
2. What is compared. A paired value whose only reader is a QuantizeLinear feeding
   DequantizeLinears (ai.onnx or com.microsoft) is compared at the DequantizeLinear's
   output: the value as its readers see it, its own rounding included. Any other value
   is compared as it is (inside a fusion group, a graph output the tool left float).
3. Figures per value, streamed over every batch with the running sums validation uses
   (`ir/evaluate.py`): SQNR, cosine, max |error|. Values are tapped in groups that fit
   `memory_budget_mb` per batch (the float and quantized copies together), the data is
   read once per group, and one batch of one group is held at a time.
4. Added noise. From noise-to-signal ratios nsr = 10^(-SQNR/10): a value's added nsr is
   its nsr minus the largest nsr among the activation inputs of its producing node,
   floored at 1e-12; `added_db` = -10 log10(added nsr). Graph inputs and constants carry
   nsr 0, so weight rounding counts as added by the node reading the weight.
   An input that is not paired (a value a pass made, or one ONNX Runtime's quantizer
   fused away) carries the largest nsr of the paired values upstream of it: the noise
   the unpaired nodes add is charged to the first paired value after them, the nearest
   point where it is measured. Values a subgraph reads implicitly are not followed.
   A node that shrinks the relative noise it receives (an average pool) shows the floor,
   120 dB. `worst(n)` ranks by `added_db`, lowest first: the node that adds the most.
5. Tapping an inner value makes it a model output, so ONNX Runtime cannot fuse the Q/DQ
   pairs around it into integer kernels: the figures are those of the Q/DQ graph in float
   arithmetic. Integer kernels round slightly differently (and on CPUs without VNNI
   saturate full-range int8 weights); validation measures the outputs as deployed. Values
   left untapped in a tap group may run as integer kernels, so with several groups the
   figures move by up to a few hundredths of a dB.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qcompiler import ir
from qcompiler.data import CalibrationData, InputSpec, input_specs, open_calibration_data
from qcompiler.ir.evaluate import ErrorSums, OutputMetrics, ValueTap, tap_groups
from qcompiler.ir.naming import unique_names
from qcompiler.modelio import read_model
from qcompiler.passes.infra.progress import Progress
from qcompiler.passes.analyses.rules import is_float, is_qdq

FLOAT_VALUES_KEY = "qcompiler.float_values"
_NSR_FLOOR = 1e-12  # added noise below this shows as 120 dB: nothing added


@dataclass(frozen=True)
class ErrorRow:
    """One paired value: its quantized-model name, float-model name, producer and figures."""

    value: ir.Value
    name: str
    float_name: str
    op: str
    node: str
    sqnr_db: float
    added_db: float
    cosine: float
    max_abs_error: float


@dataclass
class DebugResult:
    """Per-value errors of a quantized model, rows in graph order; `worst` ranks them."""

    rows: list[ErrorRow]
    pairing: Literal["recorded", "names"]
    float_values: int
    batches: int
    groups: int

    def describe(self) -> str:
        """How the values were paired, for a person."""
        how = ("by the map qcompiler recorded when it compiled the model" if self.pairing == "recorded" else
               f"by equal tensor names (the quantized model has no {FLOAT_VALUES_KEY} map: it was not "
               "compiled by qcompiler)")
        return (f"paired {len(self.rows)} of {self.float_values} float activations {how}; "
                f"{self.batches} batches, {self.groups} tap group{'s' * (self.groups != 1)}")

    def worst(self, n: int | None = None) -> list[ErrorRow]:
        """The `n` rows adding the most noise first (all rows when n is None); NaN figures last."""
        ranked = sorted(self.rows, key=lambda row: (math.isnan(row.added_db), row.added_db))
        return ranked if n is None else ranked[:n]

    def table(self, n: int | None = None) -> str:
        """`rank value op node SQNR added cosine max|err|`, worst first, dB to one decimal."""
        header = ("rank", "value", "op", "node", "SQNR", "added", "cosine", "max|err|")
        lines = [(str(rank), row.name, row.op, row.node or "-", f"{row.sqnr_db:.1f}", f"{row.added_db:.1f}",
                  f"{row.cosine:.5f}", f"{row.max_abs_error:.4g}") for rank, row in enumerate(self.worst(n), 1)]
        widths = [max(len(line[k]) for line in [header, *lines]) for k in range(len(header))]
        left = {1, 2, 3}  # names align left, numbers right
        return "\n".join("  ".join(cell.ljust(w) if k in left else cell.rjust(w)
                                   for k, (cell, w) in enumerate(zip(line, widths))).rstrip()
                         for line in [header, *lines]) + "\n"

    def to_json(self) -> str:
        """Rows worst first; non-finite figures as strings ("inf")."""
        rows = [{"value": row.name, "float_value": row.float_name, "op": row.op, "node": row.node,
                 **{key: _finite_or_text(getattr(row, key)) for key in ("sqnr_db", "added_db", "cosine",
                                                                         "max_abs_error")}}
                for row in self.worst()]
        return json.dumps({"pairing": self.pairing, "float_values": self.float_values, "batches": self.batches,
                           "groups": self.groups, "rows": rows}, indent=2) + "\n"


def record_float_names(model: ir.Model, float_names: dict[ir.Value, str]) -> None:
    """Store {quantized name: float name} of the float activations that survived, as rule 1 says.

    `float_names` is `unique_names(model.graph)` taken when the float model was exported,
    before the passes ran; call this right before exporting the quantized model.
    """
    names = unique_names(model.graph)
    links = {names[value]: float_name for value, float_name in float_names.items()
             if value in names and _is_activation(value, model.graph)}
    model.metadata[FLOAT_VALUES_KEY] = json.dumps(links, separators=(",", ":"))


def value_errors(float_model: ir.Model | str | Path, quant_model: ir.Model | str | Path, data: Any, *,
                 memory_budget_mb: int = 1024, progress: bool | None = None) -> DebugResult:
    """Compare every paired value of the two models over `data` (rules 1-4).

    `data` is CalibrationData or anything `open_calibration_data` takes; `progress` is a
    progress line on stderr (None: on a terminal only).
    """
    float_model, quant_model = _model(float_model), _model(quant_model)
    _check_same_inputs(float_model, quant_model)
    if not isinstance(data, CalibrationData):
        data = open_calibration_data(data, input_specs(float_model))
    pairs, pairing = _pairs(float_model, quant_model)
    if not pairs:
        raise ir.IRError("no value of the quantized model pairs with one of the float model: "
                         "are they the same network?")
    float_names, quant_names = unique_names(float_model.graph), unique_names(quant_model.graph)
    taps = [(f, _as_read(q), quant_names[q]) for f, q in pairs]
    metrics, batches, groups = _measure(float_model, quant_model, taps, data, memory_budget_mb << 20, progress)
    added = _added_db(quant_model, pairs, [compared for _, compared, _ in taps], metrics)
    rows = [ErrorRow(q, quant_names[q], float_names[f], *_source(q), m.sqnr_db, db, m.cosine, m.max_abs_error)
            for (f, q), m, db in zip(pairs, metrics, added)]
    return DebugResult(rows, pairing, len(_activations(float_model.graph)), batches, groups)


def annotate(quant_model: ir.Model, result: DebugResult) -> None:
    """Set `value.error` on each paired value of `quant_model`, so dumps show `err<...>`."""
    by_name = {name: value for value, name in unique_names(quant_model.graph).items()}
    for row in result.rows:
        value = by_name.get(row.name)
        if value is None:
            raise ir.IRError(f"%{row.name} is not a value of this model: annotate the model the result measured")
        value.error = ir.ErrorStats(row.sqnr_db, row.added_db, row.cosine, row.max_abs_error)


def _model(model: ir.Model | str | Path) -> ir.Model:
    return model if isinstance(model, ir.Model) else read_model(model)


def _check_same_inputs(float_model: ir.Model, quant_model: ir.Model) -> None:
    expected = {spec.name: spec for spec in input_specs(float_model)}
    found = {spec.name: spec for spec in input_specs(quant_model)}
    if found.keys() != expected.keys() or not all(
            spec.dtype == found[name].dtype and _same_shape(spec.shape, found[name].shape)
            for name, spec in expected.items()):
        raise ir.IRError(f"the models take different inputs: float {_inputs_text(expected.values())}, "
                         f"quantized {_inputs_text(found.values())}")


def _inputs_text(specs: Iterable[InputSpec]) -> str:
    return ", ".join(f"{spec.name}: {spec.dtype}{list(spec.shape or [])}" for spec in specs) or "none"


def _activations(graph: ir.Graph) -> list[ir.Value]:
    """Float tensors computed at run time in `graph` itself, in order: what pairs (rule 1)."""
    candidates = [*graph.inputs, *(value for node in graph.nodes for value in node.outputs)]
    return [value for value in candidates if _is_activation(value, graph)]


def _is_activation(value: ir.Value, graph: ir.Graph) -> bool:
    """Neither a constant nor an input with a default (a weight, as older exporters list them)."""
    return value.graph is graph and is_float(value) and not value.is_const and value.const is None


def _pairs(float_model: ir.Model, quant_model: ir.Model) -> tuple[list[tuple[ir.Value, ir.Value]], str]:
    """(float value, quantized value) pairs in the quantized graph's order, and how they were made."""
    float_names, quant_names = unique_names(float_model.graph), unique_names(quant_model.graph)
    floats = {float_names[value]: value for value in _activations(float_model.graph)}
    recorded = quant_model.metadata.get(FLOAT_VALUES_KEY)
    links = _recorded_links(recorded) if recorded is not None else {name: name for name in quant_names.values()}
    pairs = []
    for value in _activations(quant_model.graph):
        partner = floats.get(links.get(quant_names[value], ""))
        if partner is not None and _same_shape(partner.shape, _as_read(value).shape):
            pairs.append((partner, value))
    return pairs, "recorded" if recorded is not None else "names"


def _recorded_links(text: str) -> dict[str, str]:
    try:
        links = json.loads(text)
    except json.JSONDecodeError as err:
        raise ir.IRError(f"metadata {FLOAT_VALUES_KEY} is not valid JSON: {err}") from None
    if not isinstance(links, dict) or not all(isinstance(name, str) for name in links.values()):
        raise ir.IRError(f"metadata {FLOAT_VALUES_KEY} is not a map of names to names")
    return links


def _same_shape(a: tuple | None, b: tuple | None) -> bool:
    """False only when static shapes disagree: unknown ranks and symbolic dims may match."""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x == y for x, y in zip(a, b) if isinstance(x, int) and isinstance(y, int))


def _as_read(value: ir.Value) -> ir.Value:
    """The DequantizeLinear output when `value` is read only by a Q feeding DQs (rule 2); else the value."""
    uses = value.uses()
    if len(uses) != 1 or not isinstance(uses[0].user, ir.Node) or not is_qdq(uses[0].user, "QuantizeLinear"):
        return value
    readers = uses[0].user.outputs[0].consumers()
    if not readers or not all(is_qdq(reader, "DequantizeLinear") for reader in readers):
        return value
    return readers[0].outputs[0]


def _source(value: ir.Value) -> tuple[str, str]:
    """(op type, node name) computing `value`; for the output of a Q/DQ pair, the node before the pair."""
    node = value.producer
    if is_qdq(node, "DequantizeLinear") and node.inputs[0] is not None and is_qdq(
            node.inputs[0].producer, "QuantizeLinear"):
        node = node.inputs[0].producer.inputs[0].producer
    return ("input", "") if node is None else (node.op_type, node.name)


def _measure(float_model: ir.Model, quant_model: ir.Model, taps: list[tuple[ir.Value, ir.Value, str]],
             data: CalibrationData, budget: int, progress: bool | None) -> tuple[list[OutputMetrics], int, int]:
    """Figures of each (float value, compared value, name) over all of `data`, one tap group at a
    time (rule 3); (metrics, batches, groups)."""
    groups = tap_groups(float_model, [f for f, _, _ in taps], data, budget // 2)  # a float and a quantized copy
    sums = [ErrorSums(name) for _, _, name in taps]
    batches = 0
    for index, group in enumerate(groups):
        reference = ValueTap(float_model, [taps[i][0] for i in group])
        quantized = ValueTap(quant_model, [taps[i][1] for i in group])
        label = "debug" if len(groups) == 1 else f"debug, group {index + 1}/{len(groups)}"
        bar = Progress(label, operator.length_hint(data) or None, "batches", enabled=progress)
        batches = 0
        try:
            for feeds in data:
                expected = reference.run(feeds)
                actual = quantized.run(feeds)
                for i, ref, quant in zip(group, expected, actual):
                    sums[i].add(ref, quant)
                del expected, actual  # one batch of one group at a time
                batches += 1
                bar.advance()
        finally:
            bar.close()
        if batches == 0:
            raise ValueError("no data to compare the models on")
    return [s.metrics() for s in sums], batches, len(groups)


def _added_db(quant_model: ir.Model, pairs: list[tuple[ir.Value, ir.Value]], compared: list[ir.Value],
              metrics: list[OutputMetrics]) -> list[float]:
    """Each pair's added noise in dB (rule 4): nsr carried through unpaired values in graph order."""
    nsr = [_nsr(m.sqnr_db) for m in metrics]
    carried = {value: 0.0 if math.isnan(n) else n for value, n in zip(compared, nsr)}
    for node in quant_model.graph.nodes:
        for output in node.outputs:
            if output not in carried:
                carried[output] = _largest(carried, node.inputs)
    added = []
    for (_, value), n in zip(pairs, nsr):
        received = 0.0 if value.producer is None else _largest(carried, value.producer.inputs)
        added.append(-10 * math.log10(max(n - received, _NSR_FLOOR)) if not math.isnan(n) else math.nan)
    return added


def _largest(carried: dict[ir.Value, float], inputs: Iterable[ir.Value | None]) -> float:
    """The largest nsr the inputs carry; graph inputs and constants carry none."""
    return max((carried.get(value, 0.0) for value in inputs if value is not None), default=0.0)


def _nsr(sqnr_db: float) -> float:
    return 10 ** (-sqnr_db / 10)


def _finite_or_text(number: float) -> float | str:
    return number if math.isfinite(number) else str(number)
