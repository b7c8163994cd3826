"""Unique, non-empty names for every value, shared by the printer and the exporter.

Passes may create values without names or with clashing ones; text and ONNX both need
each value named once. Existing unique names are kept; others get a numbered suffix.
"""

from __future__ import annotations

from .core import Graph, Value


class NameAllocator:
    """Hands out value names unused in a model, scanning it once.

    A pass creating many values keeps one allocator for its run.
    """

    def __init__(self, graph: Graph) -> None:
        self.taken = {value.name for value in graph.root.all_values()}

    def fresh(self, hint: str) -> str:
        """`hint` if free, else `hint_1`, `hint_2`, ...; the name is then taken."""
        name, counter = hint, 0
        while not name or name in self.taken:
            counter += 1
            name = f"{hint}_{counter}"
        self.taken.add(name)
        return name


def unique_names(graph: Graph) -> dict[Value, str]:
    """Map each value defined in `graph` (and its subgraphs) to a unique name."""
    values = list(graph.all_values())
    taken: dict[str, int] = {}
    for value in values:
        taken[value.name] = taken.get(value.name, 0) + 1
    names: dict[Value, str] = {}
    used = {name for name, count in taken.items() if count == 1 and name}
    for value in values:
        name = value.name
        if not name or taken[name] > 1:
            base = name or "v"
            counter = 0
            while f"{base}_{counter}" in used:
                counter += 1
            name = f"{base}_{counter}"
            used.add(name)
        names[value] = name
    return names
