"""What the machine the model will run on needs from the compile.

ONNX Runtime's x86 u8 x s8 kernels without VNNI (AVX2 `vpmaddubsw`) add pairs of
products in int16 and saturate; with weights in [-64, 64] (`reduce_range`) they cannot.
VNNI (`vpdpbusd`, AVX512-VNNI or AVX-VNNI) and AMX accumulate in int32, and ARM's dot
product instructions do too, so full-range weights are safe there.
"""

from __future__ import annotations

import platform
from pathlib import Path

_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags Linux reports; empty when unknown (another OS)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def reduce_range_advice(machine: str | None = None, flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether int8 weights should use 7 bits on this CPU for ONNX Runtime, and why."""
    machine = (machine or platform.machine()).lower()
    if machine not in _X86:
        return False, f"{machine} CPU: integer kernels accumulate in int32"
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return False, "CPU features unknown: assuming VNNI"
    if flags & _VNNI_FLAGS:
        return False, f"CPU has {sorted(flags & _VNNI_FLAGS)[0]}: integer kernels accumulate in int32"
    return True, "x86 CPU without VNNI: ONNX Runtime's u8 x s8 kernels saturate int16 sums of full-range weights"
