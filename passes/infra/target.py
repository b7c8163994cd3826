"""The runtime and machine a compile is for: one object on the pass context that every pass reads.

1. `Target.named("ort-cpu" | "tensorrt", flags=..., machine=...)`. The flags are the CPU
   feature flags the model will run with: this machine's (`cpu_flags`) unless given, so
   a compile for another machine, or a test of a CPU-dependent choice, passes them.
2. Activations: the dtype the target quantizes them to by default, the dtypes it
   accepts, and whether it quantizes every listed value (ort-cpu: ONNX Runtime fuses
   pass-through ops between pairs) or only the inputs of compute ops (tensorrt).
3. `absorbed`: the activations its integer kernels absorb, which fuse groups with the
   op before them so no pair lands between. ONNX Runtime's CPU kernels absorb Relu and
   Clip; TensorRT fuses any pointwise activation.
4. `integer_kernels`: the op types of ONNX Runtime's optimized graph that compute in
   integers (validation runs every target's model there); `integer_mac_bytes` and
   `float_mac_bytes` what a multiply-accumulate costs in each, as cost.py weighs them.
5. `reduce_range`: whether int8 weights keep one bit of headroom. ONNX Runtime's x86
   u8 x s8 kernels without VNNI (AVX2 `vpmaddubsw`) add pairs of products in int16 and
   saturate; with weights in [-64, 64] they cannot. VNNI (`vpdpbusd`, AVX512-VNNI or
   AVX-VNNI) and AMX accumulate in int32, and ARM's dot product instructions do too, so
   full-range weights are safe there, as on TensorRT.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
_ORT_INTEGER_KERNELS = frozenset({
    "ConvInteger", "DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat", "NhwcQLinearConv",
    "QAttention", "QGemm", "QLinearConv", "QLinearConvTranspose", "QLinearMatMul",
})
ACTIVATION_DTYPES = ("uint8", "int8", "uint16", "int16")
FUSABLE_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish")


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


@dataclass(frozen=True)
class Target:
    """What the runtime and machine take (rules 2-5); built by `Target.named`."""

    name: str
    activations: str
    accepts: frozenset[str]
    compute_inputs_only: bool
    absorbed: tuple[str, ...]
    machine: str
    flags: frozenset[str]
    integer_kernels: frozenset[str] = _ORT_INTEGER_KERNELS
    integer_mac_bytes: int = 1  # rule 4: 8-bit operands
    float_mac_bytes: int = 4  # float32: fp16 weights and 16-bit activations compute in float32 on ONNX Runtime's CPU

    @classmethod
    def named(cls, name: str, *, flags: frozenset[str] | None = None, machine: str | None = None) -> Target:
        machine = (machine or platform.machine()).lower()
        flags = cpu_flags() if flags is None else frozenset(flags)
        if name == "ort-cpu":
            return cls(name, "uint8", frozenset(ACTIVATION_DTYPES), False, ("Relu", "Clip"), machine, flags)
        if name == "tensorrt":
            return cls(name, "int8", frozenset({"int8"}), True, FUSABLE_ACTIVATIONS, machine, flags)
        raise ValueError(f"unknown target {name!r}: the targets are {', '.join(TARGET_NAMES)}")

    @property
    def reduce_range(self) -> tuple[bool, str]:
        """Rule 5: whether int8 weights should use 7 bits, and why."""
        if self.name != "ort-cpu":
            return False, f"{self.name} accumulates in int32"
        if self.machine not in _X86:
            return False, f"{self.machine} CPU: integer kernels accumulate in int32"
        if not self.flags:
            return False, "CPU features unknown: assuming VNNI"
        if self.flags & _VNNI_FLAGS:
            return False, f"CPU has {sorted(self.flags & _VNNI_FLAGS)[0]}: integer kernels accumulate in int32"
        return True, "x86 CPU without VNNI: ONNX Runtime's u8 x s8 kernels saturate int16 sums of full-range weights"

    def __str__(self) -> str:
        return self.name


TARGET_NAMES = ("ort-cpu", "tensorrt")


def weight_reduce_range(option: bool | None, ctx) -> bool:
    """A pass's `reduce_range` option, or where unset the target's advice (rule 5), noted for the report."""
    if option is not None:
        return option
    reduce, why = ctx.target.reduce_range
    ctx.note_setting("reduce_range", f"{'on' if reduce else 'off'}: {why}")
    return reduce
