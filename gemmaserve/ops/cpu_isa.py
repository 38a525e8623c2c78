"""CPU instruction-set tiers: detection from the CPU's flags, capping, and the compiler flags and torch
settings each tier builds and runs with."""

from __future__ import annotations

import enum
import platform
from pathlib import Path


class Tier(enum.IntEnum):
    """The instruction sets the CPU kernels are built for, lowest first. A tier implies all below it."""

    PORTABLE = 0  # no AVX2 (or not x86): the kernels' scalar code, compiled for the baseline ISA
    AVX2 = 1  # AVX2 + FMA + F16C (Haswell .. Zen 3, desktops and laptops)
    AVX512 = 2  # AVX512F/BW/VL/DQ + VNNI, no bf16 instructions (Ice Lake, Cascade Lake)
    AVX512_BF16 = 3  # + AVX512_BF16 (Cooper Lake, Zen 4/5)
    AMX = 4  # + AMX tiles for bf16 and int8 (Sapphire Rapids and later)


# The names GEMMASERVE_CPU_ISA (config.py) accepts, and the names reports use.
NAMES = {Tier.PORTABLE: "portable", Tier.AVX2: "avx2", Tier.AVX512: "avx512", Tier.AVX512_BF16: "avx512bf16",
         Tier.AMX: "amx"}

# /proc/cpuinfo flags each tier needs beyond the tier below it.
_NEEDS = {
    Tier.AVX2: {"avx2", "fma", "f16c"},
    Tier.AVX512: {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni"},
    Tier.AVX512_BF16: {"avx512_bf16"},
    Tier.AMX: {"amx_tile", "amx_bf16", "amx_int8"},
}

# gcc target flags per tier: explicit ISA lists rather than -march=native, so a capped build truly
# contains no instruction of a higher tier (the kernels pick their code paths from these macros).
# Tuning is -mtune=native at every tier: a capped build schedules for the core it runs on.
_GCC = {
    Tier.PORTABLE: [],
    Tier.AVX2: ["-march=x86-64-v3"],
    Tier.AVX512: ["-march=x86-64-v4", "-mavx512vnni"],
    Tier.AVX512_BF16: ["-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16"],
    Tier.AMX: ["-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-mamx-int8"],
}

# What torch's own kernels may use at each tier (read by torch at import, so only a child process
# can be capped): ATen's vectorised CPU kernels and oneDNN's JIT (its ISA names).
_ATEN = {Tier.PORTABLE: "default", Tier.AVX2: "avx2", Tier.AVX512: "avx512", Tier.AVX512_BF16: "avx512",
         Tier.AMX: "avx512"}
_ONEDNN = {Tier.PORTABLE: "SSE41", Tier.AVX2: "AVX2", Tier.AVX512: "AVX512_CORE_VNNI",
           Tier.AVX512_BF16: "AVX512_CORE_BF16", Tier.AMX: "AVX512_CORE_AMX"}


def cpu_flags() -> frozenset[str]:
    """The flags line of /proc/cpuinfo as a set (empty where there is none, e.g. not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def detect(flags: frozenset[str] | set[str]) -> Tier:
    """The highest tier whose flags (and every lower tier's) the CPU has."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return Tier.PORTABLE
    tier = Tier.PORTABLE
    for t in (Tier.AVX2, Tier.AVX512, Tier.AVX512_BF16, Tier.AMX):
        if not _NEEDS[t] <= flags:
            break
        tier = t
    return tier


def parse(name: str) -> Tier:
    """A tier from its name ('avx2', 'avx512', 'avx512bf16', 'amx', 'portable'); ValueError otherwise."""
    for tier, tier_name in NAMES.items():
        if name.strip().lower() == tier_name:
            return tier
    raise ValueError(f"unknown CPU ISA tier {name!r}; choose one of {sorted(NAMES.values())}")


def resolve(cap: str | None, flags: frozenset[str] | set[str] | None = None) -> Tier:
    """The tier the kernels run at: the detected one, lowered to `cap` when a cap is given (a cap above
    what the CPU has cannot raise it: those instructions would fault)."""
    detected = detect(cpu_flags() if flags is None else flags)
    return detected if cap is None else min(detected, parse(cap))


def gcc_flags(tier: Tier) -> list[str]:
    """The target flags the kernel library is compiled with at `tier`."""
    flags = list(_GCC[tier])
    if tier != Tier.PORTABLE:
        flags.append("-mtune=native")
    return flags


def child_env(tier: Tier) -> dict[str, str]:
    """Environment that caps a *new* process at `tier` everywhere: gemmaserve's kernels
    (GEMMASERVE_CPU_ISA) and torch's own (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), which torch reads
    once at import and cannot be changed afterwards."""
    return {"GEMMASERVE_CPU_ISA": NAMES[tier], "ATEN_CPU_CAPABILITY": _ATEN[tier],
            "ONEDNN_MAX_CPU_ISA": _ONEDNN[tier], "DNNL_MAX_CPU_ISA": _ONEDNN[tier]}
