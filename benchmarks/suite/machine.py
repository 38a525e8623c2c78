"""What a benchmark ran on, for its JSON: CPU model and the features the kernel policy reads, cores, torch."""

from __future__ import annotations

import os
from typing import Any


def machine() -> dict[str, Any]:
    """CPU model, feature flags and ISA tier (ops.dispatch.CpuFeatures), visible cores, torch version and
    the kernel library's ISA under this process's default policy (GEMMASERVE_CPU_ISA caps it)."""
    import torch

    from gemmaserve.ops.dispatch import CpuFeatures, KernelPolicy

    policy = KernelPolicy.default()
    lib = policy.lib
    return {"cpu": CpuFeatures.detect().as_dict(), "policy_tier": policy.tier, "cores": os.cpu_count(),
            "kernel_isa": lib.isa if lib is not None else "", "torch": torch.__version__}
