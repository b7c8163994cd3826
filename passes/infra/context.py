"""What a pass may use besides the model: the target, the recipe's overrides, data, caches, report.

Passes never import the driver; everything they need arrives here, and only here: a
pass's own settings are its options, the rest of a compile's configuration is the
`target` and the `overrides` (which apply-overrides writes onto the nodes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .executor import Executor, LocalProcesses
from .overrides import Overrides
from .target import Target

if TYPE_CHECKING:
    from ..analyses.observers import Observations
    from .instruments import Instrument
    from .variants import VariantCache


@dataclass
class PassContext:
    """State shared by the passes of one compile.

    `evaluation_data` is held-out data for passes that measure the quantized model (the
    calibration data serves when it is None); `report` collects what passes want the
    user to read, `report["settings"]` one line per setting a pass resolved (see
    `note_setting`). `observations`, when given, keeps what passes measured on data for
    later compiles of the same model (analyses/observers.py); None measures afresh. The pass manager sets `following` to the pipeline text of the steps
    after the running pass (a pass that tries variants of the model emits them with
    exactly those passes) and drops the cached analyses whenever a pass reports a change.
    `executor` is where a pass spreads independent work it was asked to split (`jobs > 1`).
    `variants`, set by an analysis that emits many variants of one model, keeps what
    passes derive from its constants for the next variant (infra/variants.py).
    """

    target: Target = field(default_factory=lambda: Target.named("ort-cpu"))
    overrides: Overrides = field(default_factory=Overrides)
    calibration_data: Any = None
    evaluation_data: Any = None
    observations: Observations | None = None
    report: dict[str, Any] = field(default_factory=dict)
    instruments: list[Instrument] = field(default_factory=list)
    following: str = ""
    analyses: dict[str, Any] = field(default_factory=dict)
    executor: Executor = field(default_factory=LocalProcesses)
    variants: VariantCache | None = None

    def analysis(self, name: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once until the model changes: a result several passes read (plans) is worked out once."""
        if name not in self.analyses:
            self.analyses[name] = compute()
        return self.analyses[name]

    def note_setting(self, key: str, text: str) -> None:
        """A setting a pass resolved on its own (from the target or the model), for the compile report."""
        self.report.setdefault("settings", {})[key] = text

    @property
    def first_feed(self) -> dict | None:
        """The first feed of the calibration data, else of the evaluation data: a pass that must run
        the model once (to check a conversion) runs it on real sizes."""
        for data in (self.calibration_data, self.evaluation_data):
            if data is not None:
                return next(iter(data), None)
        return None
