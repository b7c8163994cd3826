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
3. The recipe overrides the pass options, under `ctx.config["insert-observers"]`:

       {"by_op_type": {"Softmax": "minmax", "com.example::Op": ...},   # qualified op type
        "by_node": {"conv1": "percentile",                            # node name, or a
                    "x": {"method": "percentile", "percentile": 99.9}}, # graph input's name
        "exclude": ["head"],          # these nodes stay float
        "force": ["add_3"]}           # quantized even where a heuristic keeps them float

   An override is an observer name or a mapping of this pass's options. A value takes
   the override of the node making it; a graph input its own by name, else that of its
   first reader. `by_node` wins over `by_op_type`, which wins over the pass options.
   `exclude` and `force` become `node.meta["quantize"]` (false/true), so place-qdq and
   later passes, which read the same plans, see them too, and dumps show them.
4. Marks from an earlier run are replaced, so the pass can run again after a rewrite.

    %c = Conv(%x, %w) meta{group="conv-act#0"}           %x: observer="minmax"
    %r = Relu(%c) meta{group="conv-act#0"}        =>     %r: observer="minmax"    (%c: none, inside the group)
    %p = MaxPool(%r)                                     %p: observer_follows="r"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from qcompiler.ir import Model, Node, Value

from .base import Pass, PassError, register_pass
from .observers import get_observer
from .rules import float_by_choice, in_qdq_form, quantized_values

_MARKS = ("observer", "observer_options", "observer_follows")
_CONFIG_KEYS = frozenset({"by_op_type", "by_node", "exclude", "force"})
_WHERE = "config['insert-observers']"


@dataclass(frozen=True)
class ObserverOptions:
    """method: the observer's registered name. The rest go to the observers that take them:
    percentile (percentile: the share of values kept, in percent), histograms' bins
    (percentile, entropy, mse), entropy's quantized_bins, mse's bits, ema-minmax's
    averaging_constant. Values are checked by constructing the observer once, when the options
    are made: a pipeline with a bad observer fails as it is parsed, before any pass runs."""

    method: str = "minmax"
    percentile: float = 99.99
    bins: int = 2048
    quantized_bins: int = 128
    bits: int = 8
    averaging_constant: float = 0.01

    def __post_init__(self) -> None:
        try:
            self.marks()
        except KeyError as err:  # an unknown observer
            raise ValueError(err.args[0] if err.args else str(err)) from None

    def marks(self) -> tuple[str, str]:
        """(observer name, `k=v,...` of the options it takes), after building one to check them."""
        cls = get_observer(self.method)
        taken = {f.name for f in dataclasses.fields(cls.Options)}
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in taken}
        cls(**options)
        return self.method, ",".join(f"{key}={value}" for key, value in options.items())


@register_pass
class InsertObservers(Pass):
    """Mark each value to calibrate with its observer; values sharing parameters with the one they follow."""

    name = "insert-observers"
    gives = frozenset({"observed"})
    breaks = frozenset({"calibrated"})  # the values it marks have no range until calibrate runs
    Options = ObserverOptions

    def run(self, model: Model, ctx) -> bool:
        config = _Config(ctx.config.get(self.name, {}), model, self.options)
        before = _marks(model)
        changed = False
        for node in model.graph.nodes:
            wanted = config.quantize.get(node.name)
            if wanted is not None and node.meta.get("quantize") is not wanted:
                node.meta["quantize"] = wanted
                changed = True
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
            method, options = config.marks_for(value)
            value.meta["observer"] = method
            if options:
                value.meta["observer_options"] = options
            self.stats[method] += 1
        return changed or _marks(model) != before


def _candidates(model: Model) -> list[Value]:
    return [*model.graph.inputs, *(v for node in model.graph.nodes for v in node.outputs)]


def _marks(model: Model) -> list[tuple]:
    return [(v, key, v.meta[key]) for v in _candidates(model) for key in _MARKS if key in v.meta]


class _Config:
    """The recipe's section for this pass, checked against the model before anything changes."""

    def __init__(self, section: dict, model: Model, defaults: ObserverOptions) -> None:
        unknown = set(section) - _CONFIG_KEYS
        if unknown:
            raise PassError(f"{_WHERE}: unknown key(s) {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        nodes = list(model.graph.nodes)
        node_names = {n.name for n in nodes if n.name}
        input_names = {v.name for v in model.graph.inputs}
        by_node = dict(section.get("by_node", {}))
        _check_names("by_node", by_node, node_names | input_names)
        exclude, force = list(section.get("exclude", ())), list(section.get("force", ()))
        _check_names("exclude", exclude, node_names)
        _check_names("force", force, node_names)
        if both := set(exclude) & set(force):
            raise PassError(f"{_WHERE}: {sorted(both)} both excluded and forced")
        self.quantize = {**dict.fromkeys(exclude, False), **dict.fromkeys(force, True)}
        # marks are worked out here, so a bad observer or option fails before anything changes
        self.defaults = _override(defaults, {}, "the pass options")
        self.by_node = {k: _override(defaults, v, f"{_WHERE}['by_node'][{k!r}]") for k, v in by_node.items()}
        self.by_op_type = {k: _override(defaults, v, f"{_WHERE}['by_op_type'][{k!r}]")
                           for k, v in dict(section.get("by_op_type", {})).items()}
        self.order = {node: index for index, node in enumerate(nodes)}

    def marks_for(self, value: Value) -> tuple[str, str]:
        if value.producer is None and value.name in self.by_node:
            return self.by_node[value.name]
        node = value.producer or self._first_reader(value)
        if node is None:
            return self.defaults
        if node.name in self.by_node:
            return self.by_node[node.name]
        return self.by_op_type.get(node.qualified_op, self.defaults)

    def _first_reader(self, value: Value) -> Node | None:
        readers = [n for n in value.consumers() if n in self.order]
        return min(readers, key=self.order.__getitem__, default=None)


def _check_names(key: str, names: Iterable[str], known: set[str]) -> None:
    missing = sorted(set(names) - known)
    if missing:
        raise PassError(f"{_WHERE}['{key}'] names {missing}, which the model does not have")


def _override(defaults: ObserverOptions, setting: str | dict, where: str) -> tuple[str, str]:
    """The marks of an observer name, or of a mapping of pass options, applied over the defaults."""
    changes = {"method": setting} if isinstance(setting, str) else dict(setting)
    try:
        return dataclasses.replace(defaults, **changes).marks()
    except (KeyError, TypeError, ValueError) as err:  # KeyError: an unknown observer
        raise PassError(f"{where}: {err.args[0] if err.args else err}") from None
