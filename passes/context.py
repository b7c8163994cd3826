"""What a pass may use besides the model: config, data, target, caches, report, RNG.

Passes never import the driver; everything they need arrives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .instruments import Instrument


@dataclass
class PassContext:
    """State shared by the passes of one compile.

    `config` is the recipe (pass name -> settings); `evaluation_data` is held-out data
    for passes that measure the quantized model (the calibration data serves when it is
    None); `analyses` caches results a pass computed and another may reuse (drop entries
    a mutation invalidates); `report` collects what passes want the user to read; `rng`
    is seeded so compiles repeat. The pass manager sets `following` to the pipeline text
    of the steps after the running pass: a pass that tries variants of the model emits
    them with exactly those passes.
    """

    config: dict[str, Any] = field(default_factory=dict)
    calibration_data: Any = None
    evaluation_data: Any = None
    target: str = "ort-cpu"
    analyses: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    instruments: list[Instrument] = field(default_factory=list)
    seed: int = 0
    following: str = ""

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
