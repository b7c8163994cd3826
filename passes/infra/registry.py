"""Named, registered classes of one kind (passes, observers): the shared registry logic."""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Generic, TypeVar

KEBAB_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes by their kebab-case `name`, each with an `Options` dataclass.

    A second class under a taken name is refused (plugins cannot silently replace
    built-ins); an unknown name gets the closest known one as a suggestion.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        name = getattr(cls, "name", "")
        if not KEBAB_NAME.fullmatch(name or ""):
            raise ValueError(f"{self.kind} {cls.__qualname__} needs a kebab-case name, not {name!r}")
        if name in self._classes and self._classes[name] is not cls:
            other = self._classes[name]
            raise ValueError(f"{self.kind} name {name!r} is taken by {other.__module__}.{other.__qualname__}")
        if not dataclasses.is_dataclass(getattr(cls, "Options", None)):
            raise ValueError(f"{cls.__qualname__}.Options must be a dataclass")
        self._classes[name] = cls
        return cls

    def get(self, name: str) -> T:
        try:
            return self._classes[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._classes, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint}") from None

    def all(self) -> dict[str, T]:
        return dict(sorted(self._classes.items()))
