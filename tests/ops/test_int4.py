"""4-bit format and kernels: packing against compressed-tensors' own packer, every kernel tier forced and
compared with the fp32 dequantised reference, the torch reference paths of int4_linear and the experts."""

from __future__ import annotations

import pytest
import torch

from gemmaserve.ops import cpu_int4, int4
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.int4 import dequantize_int4, int4_linear, moe_experts_int4, pack_int4, quantize_int4, unpack_int4
from gemmaserve.ops.moe import moe_grouped

ct_helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
TIERS = cpu_int4.tiers() or ("portable",)
needs_kernel = pytest.mark.skipif(not cpu_int4.available(), reason="int4 kernel did not build")


@pytest.mark.parametrize("k", [64, 40, 7])
def test_pack_matches_compressed_tensors_and_round_trips(k):
    q = torch.randint(-8, 8, (5, k), dtype=torch.int8, generator=torch.Generator().manual_seed(k))
    packed = pack_int4(q)
    assert torch.equal(packed, ct_helpers.pack_to_int32(q, 4))
    assert torch.equal(unpack_int4(packed, k), q)
    assert torch.equal(ct_helpers.unpack_from_int32(packed, 4, torch.Size([5, k])), q)


def test_quantize_grid_bounds_and_zero_groups():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 6, 96, generator=g)
    w[0, 1, :32] = 0.0  # an all-zero group: scale 1, q 0, no division by zero
    p, s = quantize_int4(w, 32)
    assert p.shape == (2, 6, 12) and p.dtype == torch.int32 and s.shape == (2, 6, 3) and s.dtype == torch.bfloat16
    q = unpack_int4(p, 96)
    assert q.min() >= -8 and q.max() <= 7 and torch.equal(q[0, 1, :32], torch.zeros(32, dtype=torch.int8))
    assert s[0, 1, 0] == 1.0
    err = (dequantize_int4(p, s, 96, 32) - w).abs()
    bound = s.float().repeat_interleave(32, -1)  # half a step, or a clamped top value: at most one step
    assert (err <= bound + 1e-7).all()
    # The partial last group (K=40, group 32): scale of the 8 left-over columns from those alone.
    p2, s2 = quantize_int4(w[0, :, :40], 32)
    assert s2.shape == (6, 2)
    torch.testing.assert_close(s2[:, 1].float(), (w[0, :, 32:40].abs().amax(-1) / 7.5).bfloat16().float())


@needs_kernel
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("n,k,group,rows", [(48, 256, 128, 1), (40, 704, 128, 5), (33, 96, 32, 11), (16, 40, 128, 3),
                                            (24, 128, 64, 33)])
def test_gemv_tiers_match_fp32_reference(tier, n, k, group, rows):
    g = torch.Generator().manual_seed(n + k + rows)
    p, s = quantize_int4(torch.randn(n, k, generator=g) * 0.05, group)
    x = torch.randn(rows, k, generator=g).bfloat16()
    want = x.float() @ dequantize_int4(p, s, k, group).T  # [rows, n]
    got = cpu_int4.gemv_int4(p, s, group, x, torch.float32, tier=tier)
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5)
    got16 = cpu_int4.gemv_int4(p, s, group, x, tier=tier)  # one bf16 rounding of the fp32 sum
    torch.testing.assert_close(got16.float(), want.bfloat16().float(), atol=1e-5 * want.abs().max().item(), rtol=8e-3)


@needs_kernel
@pytest.mark.parametrize("tier", TIERS)
def test_expert_gather_tiers_share_experts_and_match_reference(tier):
    g = torch.Generator().manual_seed(3)
    e, n, k, group = 6, 40, 128, 64
    p, s = quantize_int4(torch.randn(e, n, k, generator=g) * 0.05, group)
    x = torch.randn(9, k, generator=g).bfloat16()
    ids = torch.tensor([[0, 5], [5, 0], [2, 2], [1, 0], [5, 3], [0, 1], [3, 5], [4, 0], [0, 5]])  # repeats and a double
    w = dequantize_int4(p, s, k, group)  # [E, N, K] fp32
    want = torch.einsum("mk,mjnk->mjn", x.float(), w[ids])
    got = cpu_int4.gemv_int4_experts(p, s, group, ids, x, torch.float32, tier=tier)
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5)


def test_unavailable_tier_is_refused():
    if not cpu_int4.available():
        pytest.skip("int4 kernel did not build")
    p, s = quantize_int4(torch.randn(8, 64), 32)
    with pytest.raises(ValueError, match="tier"):
        cpu_int4.gemv_int4(p, s, 32, torch.randn(1, 64).bfloat16(), tier="amx")


@pytest.mark.parametrize("rows", [1, 4, KernelPolicy().int4_gemv_max_rows + 1])
def test_int4_linear_kernel_and_torch_paths_agree(rows, monkeypatch):
    g = torch.Generator().manual_seed(rows)
    p, s = quantize_int4(torch.randn(64, 192, generator=g) * 0.05, 64)
    x = torch.randn(2, rows, 192, generator=g).bfloat16()
    want = (x.float() @ dequantize_int4(p, s, 192, 64).T).bfloat16()
    got = int4_linear(x, p, s, 192, 64)
    assert got.shape == (2, rows, 64) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2 * want.abs().max().item(), rtol=0)
    off = KernelPolicy.default().without("int4_gemv")  # the plain-torch reference path
    ref = int4_linear(x, p, s, 192, 64, policy=off)
    torch.testing.assert_close(ref.float(), want.float(), atol=2e-2 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("tokens", [1, 6, KernelPolicy().int4_moe_max_tokens + 3])
def test_int4_experts_match_grouped_moe_on_dequantized_weights(tokens, monkeypatch):
    g = torch.Generator().manual_seed(tokens)
    e, h, i, k, group = 8, 64, 32, 2, 32
    gp, gs = quantize_int4(torch.randn(e, 2 * i, h, generator=g) / 8, group)
    dp, ds = quantize_int4(torch.randn(e, h, i, generator=g) / 6, group)
    x = torch.randn(tokens, h, generator=g).bfloat16()
    w, idx = torch.rand(tokens, e, generator=g).softmax(-1).topk(k, dim=-1)
    gate_up, down = dequantize_int4(gp, gs, h, group), dequantize_int4(dp, ds, i, group)
    want = moe_grouped(x.float(), gate_up, down, idx, w)
    got = moe_experts_int4(x, gp, gs, dp, ds, idx, w, group)
    tol = 2e-2 * want.abs().max().item()
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=0)
    off = KernelPolicy.default().without("int4_gemv")  # the plain-torch path
    torch.testing.assert_close(moe_experts_int4(x, gp, gs, dp, ds, idx, w, group, policy=off).float(), want, atol=tol,
                               rtol=0)


@needs_kernel
@pytest.mark.parametrize("k,group", [(256, 64), (704, 128), (40, 32)])  # 40: the scalar loop
def test_kernel_dequantize_equals_torch_dequantize(k, group):
    p, s = quantize_int4(torch.randn(3, 24, k, generator=torch.Generator().manual_seed(k)) * 0.05, group)
    assert torch.equal(cpu_int4.dequantize_bf16(p, s, k, group), dequantize_int4(p, s, k, group, torch.bfloat16))


_CAPPED_CHILD = """
import json, torch
from gemmaserve.ops import cpu_int4
from gemmaserve.ops.int4 import dequantize_int4, quantize_int4
p, s = quantize_int4(torch.randn(40, 256, generator=torch.Generator().manual_seed(0)) * 0.05, 64)
x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1)).bfloat16()
want = x.float() @ dequantize_int4(p, s, 256, 64).T
got = cpu_int4.gemv_int4(p, s, 64, x, torch.float32)
print(json.dumps({"tiers": cpu_int4.tiers(), "best": cpu_int4.best_tier(),
                  "err": float((got - want).abs().max() / want.abs().max())}))
"""


@needs_kernel
def test_cpu_isa_cap_limits_the_int4_tiers():
    """GEMMASERVE_CPU_ISA=avx2 (ops/cpu_isa.py's cap, read at start-up) leaves the int4 kernel its avx2 and
    portable tiers only, and the capped process still computes the product."""
    import json
    import os
    import subprocess
    import sys

    if "avx2" not in cpu_int4.tiers():
        pytest.skip("no avx2 here")
    env = {**os.environ, "GEMMASERVE_CPU_ISA": "avx2"}
    res = subprocess.run([sys.executable, "-c", _CAPPED_CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["tiers"] == ["portable", "avx2"] and got["best"] == "avx2" and got["err"] < 1e-5


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k,group", [(256, 64), (704, 128), (40, 32), (7, 32)])
def test_kernel_quantize_equals_torch_quantize(dtype, k, group, monkeypatch):
    w = torch.randn(2, 33, k, generator=torch.Generator().manual_seed(k)).to(dtype) * 0.05
    w[0, 3] = 0.0  # all-zero groups
    w[1, 4, 0] = 7.5 * 2 ** -6  # values landing on .5 steps: round half to even in both
    got = quantize_int4(w, group)
    monkeypatch.setattr(cpu_int4, "available", lambda: False)
    want = quantize_int4(w, group)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
