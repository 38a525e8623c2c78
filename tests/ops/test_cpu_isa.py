"""Instruction-set tiers: detection and capping, and the kernel library built and correct at every tier
the CPU can run (each in its own process: a process loads one build)."""

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

from gemmaserve.ops import cpu_isa
from gemmaserve.ops.cpu_isa import Tier

X86 = platform.machine().lower() in ("x86_64", "amd64")
ZEN4 = frozenset("avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512cd avx512_vnni avx512_bf16".split())


@pytest.mark.skipif(not X86, reason="the tiers are x86 instruction sets")
def test_detect_picks_the_highest_complete_tier():
    assert cpu_isa.detect(ZEN4) is Tier.AVX512_BF16
    assert cpu_isa.detect(ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}) is Tier.AMX
    assert cpu_isa.detect(ZEN4 - {"avx512_bf16"}) is Tier.AVX512  # Ice Lake
    assert cpu_isa.detect(ZEN4 - {"avx512_vnni"}) is Tier.AVX2  # Skylake-X: AVX512 without VNNI
    assert cpu_isa.detect({"avx2", "fma", "f16c"}) is Tier.AVX2
    assert cpu_isa.detect({"avx2"}) is Tier.PORTABLE  # no FMA
    # AMX flags without AVX512-BF16 below them do not make an AMX tier.
    assert cpu_isa.detect(ZEN4 - {"avx512_bf16"} | {"amx_tile", "amx_bf16", "amx_int8"}) is Tier.AVX512


@pytest.mark.skipif(not X86, reason="the tiers are x86 instruction sets")
def test_a_cap_lowers_but_never_raises_the_tier():
    assert cpu_isa.resolve(None, ZEN4) is Tier.AVX512_BF16
    assert cpu_isa.resolve("avx2", ZEN4) is Tier.AVX2
    assert cpu_isa.resolve(" AVX512 ", ZEN4) is Tier.AVX512
    assert cpu_isa.resolve("amx", ZEN4) is Tier.AVX512_BF16  # AMX instructions would fault here
    with pytest.raises(ValueError, match="avx512bf16"):
        cpu_isa.resolve("sse9", ZEN4)


def test_child_env_caps_torch_and_gemmaserve_alike():
    env = cpu_isa.child_env(Tier.AVX2)
    assert env == {"GEMMASERVE_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                   "DNNL_MAX_CPU_ISA": "AVX2"}
    assert cpu_isa.child_env(Tier.AVX512)["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_VNNI"  # no bf16 in oneDNN


# Run in a child process capped at one tier: build, report the path taken, check every kernel entry
# point against an fp32 torch reference of the same bf16 inputs, and name the .so for the disassembly.
_CHILD = r"""
import json, torch
from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KernelPolicy
torch.manual_seed(0)
lib = KernelPolicy.default().lib  # built for GEMMASERVE_CPU_ISA's tier (KernelConfig.cpu_isa)
assert lib is not None
err = {}
def rel(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))
w, x = torch.randn(300, 704).bfloat16(), torch.randn(5, 704).bfloat16()
err["gemv"] = rel(cpu_kernels.gemv(lib, w, x, torch.float32), x.float() @ w.float().T)
we = torch.randn(6, 96, 128).bfloat16()
ids = torch.tensor([[0, 5], [5, 2], [1, 0]])
xe = torch.randn(3, 128).bfloat16()
ref = torch.stack([torch.stack([we[e].float() @ xe[m].float() for e in ids[m].tolist()]) for m in range(3)])
err["gemv_experts"] = rel(cpu_kernels.gemv_experts(lib, we, ids, xe, torch.float32), ref)
xn, wn = torch.randn(7, 512).bfloat16(), torch.rand(512).bfloat16()
err["rms_norm"] = rel(cpu_kernels.rms_norm(lib, xn, wn, 1e-6), torch.nn.functional.rms_norm(xn.float(), (512,), wn.float(), 1e-6))
kc, vc = torch.randn(8, 16, 2, 128).bfloat16(), torch.randn(8, 16, 2, 128).bfloat16()
q = torch.randn(2, 8, 128).bfloat16()
slots = torch.stack([torch.arange(40), torch.arange(40) + 60])
n_keys = torch.tensor([40, 23])
o = cpu_kernels.decode_attention(lib, q, kc, vc, slots, n_keys, 0.1)
refs = []
for s in range(2):
    idx = slots[s, : int(n_keys[s])]
    k = kc.view(-1, 2, 128)[idx].float().repeat_interleave(4, 1)
    v = vc.view(-1, 2, 128)[idx].float().repeat_interleave(4, 1)
    p = torch.softmax(torch.einsum("hd,lhd->hl", q[s].float(), k) * 0.1, -1)
    refs.append(torch.einsum("hl,lhd->hd", p, v))
err["decode_attention"] = rel(o, torch.stack(refs))
gu = torch.randn(4, 2 * 256).bfloat16()
g, u = gu.float().chunk(2, -1)
err["geglu"] = rel(cpu_kernels.geglu(lib, gu), torch.nn.functional.gelu(g, approximate="tanh") * u)
qi = torch.randint(-127, 128, (200, 256), dtype=torch.int8)
sc = torch.rand(200) / 100
xi = torch.randn(3, 256).bfloat16()
err["gemv_int8"] = rel(cpu_kernels.gemv_int8(lib, qi, sc, xi, torch.float32), xi.float() @ (qi.float() * sc[:, None]).T)
print(json.dumps({"isa": lib.isa, "int8_isa": lib.int8_isa, "so": str(lib.path), "err": err}))
"""

# The GEMV path each tier's build must report.
_EXPECT_ISA = {Tier.PORTABLE: "portable", Tier.AVX2: "avx2", Tier.AVX512: "avx512", Tier.AVX512_BF16: "avx512bf16",
               Tier.AMX: "amx+avx512bf16"}
# Instructions that must not appear in a tier's build (objdump mnemonics / register names).
_FORBIDDEN = {Tier.PORTABLE: ["ymm", "zmm"], Tier.AVX2: ["zmm", "vpdpbusd", "vdpbf16ps"],
              Tier.AVX512: ["vdpbf16ps", "tdpbf16ps"], Tier.AVX512_BF16: ["tdpbf16ps", "tileloadd"], Tier.AMX: []}


@pytest.mark.skipif(not (X86 and sys.platform == "linux" and shutil.which("g++")), reason="needs x86 Linux and g++")
@pytest.mark.parametrize("tier", list(Tier), ids=lambda t: cpu_isa.NAMES[t])
def test_kernels_build_and_match_torch_at_every_tier(tier):
    if tier > cpu_isa.detect(cpu_isa.cpu_flags()):
        pytest.skip(f"this CPU has no {cpu_isa.NAMES[tier]}")
    env = {**os.environ, "GEMMASERVE_CPU_ISA": cpu_isa.NAMES[tier]}
    env.pop("GEMMASERVE_CPU_KERNELS", None)
    res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["isa"] == _EXPECT_ISA[tier]
    assert f"gemmaserve_kernels_{cpu_isa.NAMES[tier]}_" in os.path.basename(got["so"])
    for name, e in got["err"].items():
        assert e < 2e-2, (name, e)  # one bf16 rounding of the output, fp32 sums in another order
    if shutil.which("objdump"):
        asm = subprocess.run(["objdump", "-d", got["so"]], capture_output=True, text=True, timeout=120).stdout
        for op in _FORBIDDEN[tier]:
            assert op not in asm, f"{cpu_isa.NAMES[tier]} build contains {op}"
