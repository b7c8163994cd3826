"""Loading user passes: from a Python file, or from installed packages' entry points.

A plugin registers its passes with `@register_pass` when imported, exactly like the
built-in ones; loading it is all that is needed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ENTRY_POINT_GROUP = "qcompiler.passes"


class PluginError(Exception):
    """A plugin file or entry point that cannot be loaded."""


def load_plugin_file(path: str | Path) -> None:
    """Import a .py file so the passes it registers become available."""
    load_module(path, "plugin")


def load_module(path: str | Path, role: str) -> ModuleType:
    """Import a .py file once (by its resolved path); `role` names it in errors."""
    path = Path(path).resolve()
    if not path.is_file():
        raise PluginError(f"{path}: no such {role} file")
    module_name = "qcompiler_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise PluginError(f"{path}: the {role} failed to load: {type(err).__name__}: {err}") from None
    return module


def load_function(reference: str, role: str) -> Callable:
    """The function `name` of `FILE.py:name`, e.g. a metric given on the command line."""
    path, _, name = reference.rpartition(":")
    if not path or not name:
        raise PluginError(f"{role} {reference!r}: write it as FILE.py:function")
    function = getattr(load_module(path, role), name, None)
    if not callable(function):
        raise PluginError(f"{role} {reference!r}: {path} has no function {name!r}")
    return function


def load_entry_point_plugins() -> None:
    """Import every module installed under the `qcompiler.passes` entry-point group."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:
            raise PluginError(f"plugin {entry.name!r} ({entry.value}) failed to load: {err}") from None
