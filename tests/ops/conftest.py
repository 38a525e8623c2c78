"""Kernel fixtures: every CPU kernel test runs once per ISA tier this machine can run (the policy forced
down tier by tier builds the library for that tier), so each fallback path is tested on any machine."""

from __future__ import annotations

import platform
import shutil
import sys

import pytest

from gemmaserve.ops.dispatch import TIERS, CpuFeatures, KernelPolicy

# On x86_64 Linux with g++ the kernels must build; elsewhere the kernel tests skip.
MUST_BUILD = sys.platform == "linux" and platform.machine() == "x86_64" and shutil.which("g++") is not None
MACHINE_TIER = CpuFeatures.detect().tier
# Every tier up to the machine's: amx only on an AMX machine, the rest everywhere x86 runs.
RUNNABLE_TIERS = TIERS[: TIERS.index(MACHINE_TIER) + 1]


@pytest.fixture(scope="session", params=RUNNABLE_TIERS)
def policy(request) -> KernelPolicy:
    """The default kernel policy forced down to one tier, its library built for that tier."""
    p = KernelPolicy.default().for_tier(request.param)
    if p.lib is None:
        if MUST_BUILD and p.cpu_kernels:
            pytest.fail(f"CPU kernels for tier {request.param} failed to build (see the logged warning)")
        pytest.skip("CPU kernels unavailable here")
    return p


@pytest.fixture(scope="session")
def lib(policy: KernelPolicy):
    """The kernel library of `policy`'s tier."""
    return policy.lib
