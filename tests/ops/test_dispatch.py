"""ops.dispatch: CPU feature detection and tier caps, the kernel policy's construction, variants and its
one eligibility predicate."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gemmaserve.config import KernelConfig
from gemmaserve.ops.dispatch import KERNELS, TIERS, TORCH_ONLY, CpuFeatures, KernelPolicy

ZEN4 = "fpu sse2 avx avx2 fma f16c avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16".split()
SAPPHIRE_RAPIDS = ZEN4 + ["amx_tile", "amx_bf16", "amx_int8"]
ICE_LAKE = [f for f in ZEN4 if f != "avx512_bf16"]


@pytest.mark.parametrize("flags,tier", [
    ([], "portable"),
    (["avx2", "f16c"], "portable"),  # AVX2 without FMA: no AVX2 kernels
    (["avx2", "fma", "f16c"], "avx2"),
    ([f for f in ICE_LAKE if f != "avx512_vnni"], "avx2"),  # AVX512 without VNNI (Skylake-X)
    (ICE_LAKE, "avx512"),
    (ZEN4, "avx512bf16"),
    (SAPPHIRE_RAPIDS, "amx"),
    (["amx_tile", "amx_bf16", "amx_int8"], "portable"),  # tiers are cumulative: no AMX kernels without AVX512
])
def test_tier_from_cpu_flags(flags, tier):
    feats = CpuFeatures.from_flags(flags, "test cpu")
    assert feats.tier == tier
    assert feats.vnni == feats.avx512  # VNNI comes with the AVX512 tier


def test_capping_clears_every_feature_above_the_tier_and_never_adds_one():
    spr = CpuFeatures.from_flags(SAPPHIRE_RAPIDS, "spr")
    assert [spr.capped(t).tier for t in TIERS] == list(TIERS)
    assert spr.capped("avx512") == CpuFeatures("spr", avx2=True, avx512=True, vnni=True)
    avx2_only = CpuFeatures.from_flags(["avx2", "fma", "f16c"])
    assert avx2_only.capped("amx") == avx2_only
    with pytest.raises(ValueError, match="unknown CPU ISA tier"):
        spr.capped("sse9")
    assert spr.as_dict() == {"model": "spr", "avx2": True, "avx512": True, "vnni": True, "avx512_bf16": True,
                             "amx": True, "tier": "amx"}


def test_this_machine_is_detected_once():
    assert CpuFeatures.detect() is CpuFeatures.detect()
    assert CpuFeatures.detect().tier in TIERS


def test_policy_from_config_features_and_device():
    spr = CpuFeatures.from_flags(SAPPHIRE_RAPIDS, "spr")
    p = KernelPolicy.create(KernelConfig(), "cpu", spr)
    assert (p.device, p.tier, p.cpu_kernels, p.grouped_mm) == ("cpu", "amx", True, True)
    capped = KernelPolicy.create(KernelConfig(cpu_isa="avx2", cpu_kernels=False, grouped_mm=False), "cuda:0", spr)
    assert (capped.device, capped.tier, capped.cpu_kernels, capped.grouped_mm) == ("cuda", "avx2", False, False)
    assert capped.lib is None  # no CPU kernels for a CUDA policy, nor with the switch off
    assert p.for_tier("avx512").tier == "avx512" and p.for_tier("avx512").features.model == "spr"


def test_environment_reaches_the_policy_only_through_kernel_config():
    cfg = KernelConfig.from_env({"GEMMASERVE_CPU_KERNELS": "0", "GEMMASERVE_GROUPED_MM": "0",
                                 "GEMMASERVE_CPU_ISA": "avx2", "GEMMASERVE_COMPILE_DECODE": "all"})
    assert cfg == KernelConfig(cpu_kernels=False, grouped_mm=False, cpu_isa="avx2", compile_decode="all")
    assert KernelConfig.from_env({}) == KernelConfig()
    with pytest.raises(ValueError, match="unknown cpu_isa"):
        KernelConfig(cpu_isa="avx1024")
    p = KernelPolicy.create(cfg, "cpu")
    assert p.lib is None and not p.takes("norm", torch.zeros(4, dtype=torch.bfloat16))


def test_switching_a_family_off_is_one_spelling():
    p = KernelPolicy()
    off = p.without("norm", "grouped_mm")
    assert (off.norm, off.grouped_mm, off.gemv) == (False, False, True)
    assert p.norm  # a new object: the policy itself never changes
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.norm = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown kernels"):
        p.without("gemv_max_rows")
    assert not TORCH_ONLY.cpu_kernels and not TORCH_ONLY.grouped_mm


def test_takes_checks_switch_dtype_device_contiguity_and_library():
    p = KernelPolicy.default()
    if p.lib is None:
        pytest.skip("CPU kernels unavailable here")
    w = torch.zeros(8, 16, dtype=torch.bfloat16)
    x = torch.zeros(2, 32, dtype=torch.bfloat16)[:, ::2]  # strided rows
    assert p.takes("gemv", w, strided=(x,))
    assert not p.takes("gemv", w.t(), strided=(x,))  # a weight must be contiguous
    assert not p.takes("gemv", x)  # ... so must every listed tensor
    assert not p.takes("gemv", w.float(), strided=(x,))  # dtype
    assert not p.takes("gemv", w, strided=(x.float(),))
    assert not p.takes("gemv", torch.zeros(8, 16, dtype=torch.bfloat16, device="meta"))  # device
    assert p.takes("int8_gemv", torch.zeros(4, dtype=torch.int8), dtypes=(torch.int8,))
    for kernel in KERNELS:
        assert not p.without(kernel).takes(kernel, w)  # each family's switch
        assert not p.torch_only().takes(kernel, w)  # the master switch
    info = p.describe()
    assert info["kernels"] == list(KERNELS) and info["cpu"]["tier"] == p.tier and info["library_isa"]
