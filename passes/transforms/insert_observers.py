"""insert-observers: mark each value to calibrate with the observer that will watch it.

1. The values come from the quantization plans (rules.py): activation inputs and
   quantized outputs of quantized ops in the main graph; weights, biases and constants
   are quantized from their data and get no observer.
2. A value observed for itself gets `meta["observer"]` (an observer name, checked with
   `observers.get_observer` when the pass runs) and, when that observer takes any of the
   pass's options, `meta["observer_options"]` as `k=v,...` text (what calibrate reads).
   A value sharing another's parameters (a pass-through output, a Concat input) gets
   `meta["observer_follows"]`: the name of the value whose observer decides for both,
   for people reading dumps and reports; passes take that relation as objects from
   `rules.quantized_values`, since names are no edges.
3. Overrides (`ctx.overrides`: observer and observer options) beat the pass options. A
   value takes the settings of the node making it; a graph input those of its own name
   in `by_node`, else those of its first reader. Which nodes are quantized at all is
   the plans' (rules.py), which read apply-overrides' `quantize` marks.
4. Marks from an earlier run are replaced, so the pass can run again after a rewrite.

    %c = Conv(%x, %w) meta{group="conv-act#0"}           %x: observer="minmax"
    %r = Relu(%c) meta{group="conv-act#0"}        =>     %r: observer="minmax"    (%c: none, inside the group)
    %p = MaxPool(%r)                                     %p: observer_follows="r"
"""

from __future__ import annotations

from qcompiler.ir import Model, Node, Value

from ..analyses.observers import ObserverOptions
from ..analyses.rules import float_by_choice, in_qdq_form, quantized_values
from ..infra.base import Pass, register_pass
from ..infra.overrides import Overrides, observer_options

_MARKS = ("observer", "observer_options", "observer_follows")


@register_pass
class InsertObservers(Pass):
    """Mark each value to calibrate with its observer; values sharing parameters with the one they follow."""

    name = "insert-observers"
    reads = frozenset({"quantize", "precision", "group"})
    writes = frozenset({"observer", "observer_options", "observer_follows"})
    gives = frozenset({"observed"})
    breaks = frozenset({"calibrated"})  # the values it marks have no range until calibrate runs
    Options = ObserverOptions

    def run(self, model: Model, ctx) -> bool:
        choose = _Choices(model, ctx.overrides, self.options)
        before = _marks(model)
        for value in _candidates(model):
            for key in _MARKS:
                value.meta.pop(key, None)
        raw_readers = float_by_choice(model)
        for value, leader in quantized_values(model).items():
            if in_qdq_form(value, raw_readers) and in_qdq_form(leader, raw_readers):
                continue  # a pair the model holds keeps its parameters (place-qdq): nothing to observe
            if leader is not value:
                value.meta["observer_follows"] = leader.name
                self.stats["follows"] += 1
                continue
            method, options = choose.marks_for(value)
            value.meta["observer"] = method
            if options:
                value.meta["observer_options"] = options
            self.stats[method] += 1
        return _marks(model) != before


def _candidates(model: Model) -> list[Value]:
    return [*model.graph.inputs, *(v for node in model.graph.nodes for v in node.outputs)]


def _marks(model: Model) -> list[tuple]:
    return [(v, key, v.meta[key]) for v in _candidates(model) for key in _MARKS if key in v.meta]


class _Choices:
    """Rule 3: each value's observer marks, worked out once per distinct setting."""

    def __init__(self, model: Model, overrides: Overrides, defaults: ObserverOptions) -> None:
        self.overrides, self.defaults = overrides, defaults
        self.order = {node: index for index, node in enumerate(model.graph.nodes)}
        self.inputs = set(model.graph.inputs)
        self.made: dict[ObserverOptions, tuple[str, str]] = {}

    def marks_for(self, value: Value) -> tuple[str, str]:
        if value in self.inputs and value.name in self.overrides.by_node:
            settings = self.overrides.by_node[value.name]
        else:
            node = value.producer or self._first_reader(value)
            settings = self.overrides.settings(node) if node is not None else {}
        options = observer_options(self.defaults, settings)
        if options not in self.made:
            self.made[options] = options.marks()
        return self.made[options]

    def _first_reader(self, value: Value) -> Node | None:
        readers = [n for n in value.consumers() if n in self.order]
        return min(readers, key=self.order.__getitem__, default=None)
