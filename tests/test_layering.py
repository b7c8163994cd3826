"""Imports point one way, qcompiler -> qcompiler.passes -> qcompiler.ir, with no cycles; within
qcompiler.passes, nothing in infra/ or analyses/ imports from transforms/.

Every import statement of the three packages is read with `ast`, wherever it sits: at module
level, in a class, or inside a function (a deferred import is a dependency all the same, only
paid later). Imports under `if TYPE_CHECKING:` never execute, so they are left out of the cycle
check; they still count for layering, because a type a module names is a type it depends on.

An import edge goes to the module the statement names (`from P import n` names the submodule
`P.n` if there is one, else the package `P` itself, i.e. its `__init__`) and to that module's
enclosing packages, which Python runs first. Packages that enclose the importer are left out:
they are already running when the importer's body runs, so a package `__init__` importing its
own submodules is not a cycle by itself; a submodule importing a name from its package is.
So `from qcompiler import ir` in passes depends on `qcompiler.ir`, not on `qcompiler/__init__`,
which is why that `__init__` must stay light: it runs before every module here, and
`test_root_package_imports_nothing_at_import_time` keeps it that way.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"qcompiler": ROOT / "qcompiler", "qcompiler.ir": ROOT / "ir", "qcompiler.passes": ROOT / "passes"}
LAYERS = {  # package -> what it may import from qcompiler
    "qcompiler.ir": ("qcompiler.ir",),
    "qcompiler.passes": ("qcompiler.ir", "qcompiler.passes"),
}
PASS_LAYERS = {  # within passes, the transforms are on top: neither the infrastructure nor an analysis imports one
    "qcompiler.passes.infra": ("qcompiler.ir", "qcompiler.passes.infra", "qcompiler.passes.analyses"),
    "qcompiler.passes.analyses": ("qcompiler.ir", "qcompiler.passes.infra", "qcompiler.passes.analyses"),
}


def _sources() -> dict[str, Path]:
    """Module name -> file, following the package-dir mapping (ir/x.py is qcompiler.ir.x) into
    subpackages (passes/infra/base.py is qcompiler.passes.infra.base)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _sources()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST, guarded: bool = False, top: bool = True):
    """(statement, under TYPE_CHECKING, runs at import time) for every import in `node`."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, guarded, top
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _imports(child, True, top)
        for child in node.orelse:
            yield from _imports(child, guarded, top)
    else:
        top = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            yield from _imports(child, guarded, top)


def _targets(module: str, stmt: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules one import statement names: `from P import n` names `P.n` if that is a module, else `P`."""
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    base = stmt.module or ""
    if stmt.level:
        package = module if MODULES[module].stem == "__init__" else module.rpartition(".")[0]
        for _ in range(stmt.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in stmt.names]


def _enclosing(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _edges_of(module: str, source: str):
    """(importer, imported, under TYPE_CHECKING, runs at import time, line) for one module's imports."""
    own = set(_enclosing(module))
    for stmt, guarded, top in _imports(ast.parse(source)):
        for target in _targets(module, stmt):
            for imported in [*_enclosing(target), target]:
                if imported in MODULES and imported != module and (imported == target or imported not in own):
                    yield module, imported, guarded, top, stmt.lineno


EDGES = [edge for module, path in MODULES.items() for edge in _edges_of(module, path.read_text())]


def _runtime_graph() -> nx.DiGraph:
    """Imports that execute, each edge labelled with the first line importing it."""
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    for module, imported, guarded, _, line in EDGES:
        if not guarded and not graph.has_edge(module, imported):
            graph.add_edge(module, imported, line=line)
    return graph


def _chain(graph: nx.DiGraph, cycle: list[str]) -> str:
    hops = zip(cycle, cycle[1:] + cycle[:1])
    return " -> ".join(f"{a} (line {graph.edges[a, b]['line']})" for a, b in hops) + f" -> {cycle[0]}"


def test_the_reader_resolves_relative_deferred_and_type_checking_imports():
    source = """
from typing import TYPE_CHECKING
from . import core
from .. import passes
if TYPE_CHECKING:
    from qcompiler.ir.verify import verify_model
def f():
    from qcompiler.ir import Model
"""
    assert {edge[1:4] for edge in _edges_of("qcompiler.ir.printer", source)} == {
        ("qcompiler.ir.core", False, True), ("qcompiler.passes", False, True),
        ("qcompiler.ir.verify", True, True), ("qcompiler.ir", False, False)}
    from_fuse = _edges_of("qcompiler.passes.transforms.fuse", "from qcompiler.ir.core import Node")
    from_passes = {edge[1] for edge in from_fuse}
    assert from_passes == {"qcompiler.ir", "qcompiler.ir.core"}  # the package runs first; qcompiler is already running


def test_no_import_cycles():
    graph = _runtime_graph()
    cycles = sorted(_chain(graph, cycle) for cycle in nx.simple_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_imports_point_one_way():
    wrong = [f"{module} (line {line}) imports {imported}" for module, imported, _, _, line in EDGES
             for layer, allowed in {**LAYERS, **PASS_LAYERS}.items()
             if _within(module, layer) and not any(_within(imported, ok) for ok in allowed)]
    assert not wrong, "\n".join(wrong)


def test_root_package_imports_nothing_at_import_time():
    """`qcompiler/__init__` runs before any module of the three packages: at import time it loads
    none of them (the driver comes on first use of `qcompiler.compile`)."""
    eager = [imported for module, imported, _, top, _ in EDGES if module == "qcompiler" and top]
    assert not eager


LOADED_ABOVE = """
import sys
import qcompiler.{layer}
print(sorted(m for m in sys.modules if m.startswith("qcompiler.") and not m.startswith({allowed})))
"""


def test_importing_a_layer_loads_nothing_above_it():
    """The reader's premise, in a fresh interpreter: `qcompiler/__init__` runs first but loads no driver."""
    for layer, allowed in LAYERS.items():
        code = LOADED_ABOVE.format(layer=layer.removeprefix("qcompiler."), allowed=allowed)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        assert result.stdout.strip() == "[]", f"importing {layer} loads {result.stdout}"
