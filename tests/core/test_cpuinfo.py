"""The CPU description sent to the server: model, widest SIMD flag, x86-64 psABI level."""

from __future__ import annotations

import pytest

from nodepilot.cpuinfo import X86_64_LEVELS, CpuInfo, cpu_info, parse

V1 = "fpu cx8 cmov mmx fxsr sse sse2 syscall"
V2 = V1 + " cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3"
V3 = V2 + " avx avx2 bmi1 bmi2 f16c fma abm movbe xsave"
V4 = V3 + " avx512f avx512bw avx512cd avx512dq avx512vl"


def cpuinfo_text(flags: str, model: str = "AMD EPYC 7B12 64-Core Processor", cpus: int = 2) -> str:
    return "\n\n".join(f"processor\t: {n}\nmodel name\t: {model}\nphysical id\t: 0\ncore id\t\t: {n}\n"
                       f"flags\t\t: {flags}" for n in range(cpus))


@pytest.mark.parametrize(("flags", "level", "simd"), [
    (V1, "x86-64-v1", "SSE2"), (V2, "x86-64-v2", "SSE4_2"), (V3, "x86-64-v3", "AVX2"), (V4, "x86-64-v4", "AVX512F"),
    (V4.replace(" bmi2", ""), "x86-64-v2", "AVX512F"),  # a level needs every flag of the levels below
    (V3 + " avx512f", "x86-64-v3", "AVX512F"),  # AVX-512 foundation alone is not v4
    ("fpu sse", None, "SSE"),  # short of the baseline
])
def test_levels_and_simd_flags(flags: str, level: str | None, simd: str):
    cpu = parse(cpuinfo_text(flags), machine="x86_64")
    assert (cpu.architecture_level, cpu.simd) == (level, simd)


def test_consumption_unit_and_layout():
    cpu = parse(cpuinfo_text(V3, cpus=4), machine="x86_64")
    assert cpu.consumption_unit == "s+AMD EPYC 7B12 64-Core Processor+AVX2"
    assert (cpu.model, len(cpu.sockets), len(cpu.cores)) == ("AMD EPYC 7B12 64-Core Processor", 1, 4)


def test_other_architectures_have_no_x86_level():
    arm = parse("processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve\nCPU part\t: 0xd0c\n", machine="aarch64")
    assert (arm.architecture_level, arm.simd) == (None, "SVE")
    assert parse(cpuinfo_text(V4), machine="aarch64").architecture_level is None


def test_the_levels_build_on_each_other():
    assert [name for name, _ in X86_64_LEVELS] == [f"x86-64-v{n}" for n in range(1, 5)]
    seen: set[str] = set()
    for _, flags in X86_64_LEVELS:
        assert not seen & flags
        seen |= flags


def test_this_node_is_read_once():
    assert cpu_info() is cpu_info()
    assert isinstance(cpu_info(), CpuInfo) and cpu_info().consumption_unit.startswith("s+")
