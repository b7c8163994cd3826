"""The annotations passes leave for each other in `meta`, each a declared key with a type.

`node.meta` and `value.meta` are how one pass tells a later one what it decided (a fusion
group, an observer, a precision) and how a user steers a node by hand in a dump. So that
this interface is written down rather than a set of strings passes happen to agree on,
every key is declared here with the type and choices of its values, and each pass
declares the keys it reads and writes (`Pass.reads`, `Pass.writes`). The verifier
instrument checks after every pass that the declared keys hold values of their type and
that the pass changed no key it did not declare. Plugins declare their own keys with
`declare_meta_key`; keys nobody declared (a user's notes in a dump) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from qcompiler.ir import Model

from ..analyses.rules import PRECISIONS
from .target import ACTIVATION_DTYPES


@dataclass(frozen=True)
class MetaKey:
    """A `meta` key: on nodes or values, the type of its values (and their choices), what it means."""

    name: str
    on: Literal["node", "value"]
    type: type | tuple[type, ...]
    doc: str
    choices: tuple[Any, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why `value` is not a value of this key, or None."""
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            names = self.type.__name__ if isinstance(self.type, type) else " or ".join(t.__name__ for t in self.type)
            return f"takes {names}, not {value!r}"
        if self.choices and value not in self.choices:
            return f"takes one of {', '.join(map(str, self.choices))}, not {value!r}"
        return None


_KEYS: dict[tuple[str, str], MetaKey] = {}


def declare_meta_key(key: MetaKey) -> MetaKey:
    """Make `key` known; a second declaration of the same key is refused."""
    if (key.on, key.name) in _KEYS:
        raise ValueError(f"meta key {key.name!r} on {key.on}s is already declared")
    _KEYS[key.on, key.name] = key
    return key


def meta_key(on: str, name: str) -> MetaKey | None:
    return _KEYS.get((on, name))


for _key in (
    MetaKey("quantize", "node", bool, "false keeps the node float, true quantizes it where a heuristic would not "
            "(apply-overrides, from the recipe's exclude and force)"),
    MetaKey("activations", "node", str, "the dtype of the node's quantized activations (place-qdq)",
            ACTIVATION_DTYPES),
    MetaKey("precision", "node", str, "the node's precision level (rules.PRECISIONS): set by a recipe or "
            "assign-precision, read by every quantizing pass", PRECISIONS),
    MetaKey("weight_scheme", "node", str, "per-channel or per-tensor weights (fold-weights)",
            ("per-channel", "per-tensor")),
    MetaKey("algorithms", "node", str, "the accuracy algorithms (comma-separated pass names) that may change "
            "the node; without it, every one the pipeline runs (apply-overrides, from the recipe)"),
    MetaKey("group", "node", str, "the fusion group the node belongs to, quantized as one (fuse)"),
    MetaKey("module", "node", str, "the torch module that produced the node (the torch front end)"),
    MetaKey("observer", "value", str, "the observer that calibrates the value (insert-observers)"),
    MetaKey("observer_options", "value", str, "the observer's options as k=v,... (insert-observers)"),
    MetaKey("observer_follows", "value", str, "the value whose observer decides this one's parameters"),
    MetaKey("observer_state", "value", object, "the observer after calibration, for passes choosing scales "
            "(calibrate)"),
):
    declare_meta_key(_key)


def meta_entries(model: Model) -> Iterator[tuple[str, Any, str, Any]]:
    """(kind, owner, key, value) of every meta entry of the model's nodes and values, subgraphs included."""
    for node in model.graph.all_nodes():
        for key, value in node.meta.items():
            yield "node", node, key, value
    for owner in model.graph.all_values():
        for key, value in owner.meta.items():
            yield "value", owner, key, value
