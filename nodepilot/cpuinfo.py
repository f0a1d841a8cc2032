"""The node's CPU as the server's accounting wants it: model, vector extensions, x86-64 level.

Read once from ``/proc/cpuinfo`` and cached (the CPU does not change under a running pilot). Used
for ``cpuConsumptionUnit`` (``s+<model>+<widest SIMD flag>``, e.g. ``s+AMD EPYC 7B12 64-Core
Processor+AVX2``) and ``cpu_architecture_level`` of job updates and of the worker-node inventory.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
MAX_LINES = 20000

# The x86-64 micro-architecture levels of the System V psABI, as the kernel names the flags:
# each level needs its own flags and those of every level below it.
X86_64_LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("x86-64-v1", frozenset({"cmov", "cx8", "fpu", "fxsr", "mmx", "syscall", "sse", "sse2"})),
    ("x86-64-v2", frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})),
    ("x86-64-v3", frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})),
    ("x86-64-v4", frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
)
# widest first: the kernel's flag name -> the name in cpuConsumptionUnit
SIMD_FLAGS: tuple[tuple[str, str], ...] = (
    ("avx512f", "AVX512F"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4_2"), ("sse4_1", "SSE4_1"),
    ("ssse3", "SSSE3"), ("pni", "SSE3"), ("sse2", "SSE2"), ("sse", "SSE"),
    ("sve2", "SVE2"), ("sve", "SVE"), ("asimd", "ASIMD"), ("neon", "NEON"),  # arm64 ("Features" line)
)


@dataclass(frozen=True)
class CpuInfo:
    model: str = ""
    flags: frozenset[str] = frozenset()
    sockets: frozenset[str] = frozenset()  # "physical id" values
    cores: frozenset[tuple[str, str]] = frozenset()  # (physical id, core id) pairs
    machine: str = field(default_factory=platform.machine)

    @property
    def simd(self) -> str:
        """The widest vector extension the CPU has ("" when none is known)."""
        return next((name for flag, name in SIMD_FLAGS if flag in self.flags), "")

    @property
    def architecture_level(self) -> str | None:
        """``x86-64-v1``..``v4``: the highest level whose flags (and those below) are all there;
        None for another architecture or a CPU short of the baseline."""
        if self.machine not in ("x86_64", "AMD64") or not self.flags:
            return None
        level = None
        for name, needed in X86_64_LEVELS:
            if not needed <= self.flags:
                break
            level = name
        return level

    @property
    def consumption_unit(self) -> str:
        """``cpuConsumptionUnit``: seconds of this CPU model with this vector extension."""
        return "+".join(part for part in ("s", self.model or platform.processor() or "unknown", self.simd) if part)


def parse(text: str, machine: str | None = None) -> CpuInfo:
    """The first model name and flag list, and the sockets and cores, of a ``/proc/cpuinfo`` text."""
    model, socket = "", ""
    flags: frozenset[str] = frozenset()
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    for line in text.splitlines()[:MAX_LINES]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.lower().split())
        elif key == "physical id":
            socket = value
            sockets.add(value)
        elif key == "core id":
            cores.add((socket, value))
    return CpuInfo(model, flags, frozenset(sockets), frozenset(cores), machine or platform.machine())


@functools.cache
def cpu_info() -> CpuInfo:
    """This node's CPU (read once; an unreadable /proc/cpuinfo gives an empty description)."""
    try:
        return parse(CPUINFO.read_text(errors="replace"))
    except OSError:
        return CpuInfo()
