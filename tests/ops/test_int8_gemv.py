"""The CPU int8-weight GEMV kernel (csrc/gemv_int8.cpp) against the torch int8 reference (dequantise in
fp32, matmul, one rounding), and its wiring into ops.quant's int8_linear and int8 MoE."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import gemmaserve.ops.quant as quant
from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.moe import moe_grouped
from gemmaserve.ops.quant import dequantize, int8_linear, moe_experts_int8, quantize_per_channel


def _ref(q: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The torch int8 reference in fp32: x [M, K] @ dequantised [N, K]^T -> [M, N]."""
    return x.float() @ dequantize(q, s, torch.float32).T


def _close(out: torch.Tensor, ref: torch.Tensor, k: int) -> None:
    # Every product x * q * s is exact in fp32 for bf16 x and scale; only the fp32 summation order
    # differs (error ~ sqrt(K) ulp of the largest magnitude).
    big = ref.abs().amax().clamp_min(1e-30)
    assert float((out.float() - ref).abs().max()) <= (1e-6 + 2e-7 * k**0.5) * float(big)


def _q(n: int, k: int, seed: int, scale_dtype=torch.bfloat16, lead: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return quantize_per_channel((0.3 * torch.randn(*lead, n, k, generator=g)).bfloat16(), scale_dtype)


@pytest.mark.parametrize("n,k", [(1, 512), (5, 1), (17, 31), (33, 15), (129, 17), (1000, 704), (3001, 1000),
                                 (1536, 1024), (96, 130)])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 11])
def test_gemv_int8_matches_torch_int8_reference(n, k, m, lib):
    q, s = _q(n, k, n * 7 + k + m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).bfloat16()
    ref = _ref(q, s, x)
    out32 = cpu_kernels.gemv_int8(lib, q, s, x, torch.float32)
    assert out32.shape == (m, n) and out32.dtype == torch.float32
    _close(out32, ref, k)
    out16 = cpu_kernels.gemv_int8(lib, q, s, x)
    assert out16.dtype == torch.bfloat16
    assert torch.equal(out16, out32.bfloat16())  # one rounding of the fp32 result
    # The torch reference rounded once: equal but for the last fp32 bit deciding a bf16 tie-break.
    assert float((out16 != ref.bfloat16()).float().mean()) < 0.01


@pytest.mark.parametrize("m", [1, 4])
def test_fp32_scales_and_leading_dims(m, lib):
    q, s = _q(300, 256, m, scale_dtype=torch.float32)
    x = torch.randn(2, m, 256).bfloat16()
    out = cpu_kernels.gemv_int8(lib, q, s, x, torch.float32)
    assert out.shape == (2, m, 300)
    _close(out, _ref(q, s, x.reshape(-1, 256)).reshape(2, m, 300), 256)


def test_rows_and_threads_do_not_change_a_row(lib):
    # Each output's fp32 sum runs in one fixed order per form (FMA for 1-2 rows, AMX tiles from 3 rows
    # where the CPU has them), whatever the row count, row blocking or thread split.
    q, s = _q(2000, 1024, 3)
    x = torch.randn(8, 1024).bfloat16()
    eight = cpu_kernels.gemv_int8(lib, q, s, x, torch.float32)
    assert torch.equal(eight[:3], cpu_kernels.gemv_int8(lib, q, s, x[:3], torch.float32))
    one = cpu_kernels.gemv_int8(lib, q, s, x[:1], torch.float32)
    assert torch.equal(one, cpu_kernels.gemv_int8(lib, q, s, x[:2], torch.float32)[:1])
    _close(eight[:1], one, 1024)  # the two forms: same products, another summation order
    before = torch.get_num_threads()
    try:
        for rows in (1, 8):
            torch.set_num_threads(1)
            a = cpu_kernels.gemv_int8(lib, q, s, x[:rows], torch.float32)
            torch.set_num_threads(2)
            b = cpu_kernels.gemv_int8(lib, q, s, x[:rows], torch.float32)
            assert torch.equal(a, b) and torch.equal(a, one if rows == 1 else eight)
    finally:
        torch.set_num_threads(before)


def test_strided_x_and_special_values(lib):
    q, s = _q(40, 40, 1)
    base = torch.randn(3, 64).bfloat16()
    x = base[:, :40]  # row stride 64 > K: read in place
    _close(cpu_kernels.gemv_int8(lib, q, s, x, torch.float32), _ref(q, s, x), 40)
    q = torch.ones(4, 40, dtype=torch.int8)
    q[3] = 0
    s = torch.ones(4, dtype=torch.bfloat16)
    x = torch.zeros(2, 40).bfloat16()
    x[0, 39] = float("inf")  # in the 16-wide tail (40 = 2*16 + 8)
    x[1, 0] = float("nan")
    out = cpu_kernels.gemv_int8(lib, q, s, x)
    assert torch.isinf(out[0, :3]).all() and (out[0, :3] > 0).all()
    assert torch.isnan(out[0, 3])  # inf * 0, as the reference
    assert torch.isnan(out[1]).all()


def test_bad_inputs_are_rejected(lib):
    q, s = _q(8, 64, 0)
    x = torch.randn(1, 64).bfloat16()
    with pytest.raises(ValueError):
        cpu_kernels.gemv_int8(lib, q.t().contiguous().t(), s, x)  # non-contiguous weight
    with pytest.raises(ValueError):
        cpu_kernels.gemv_int8(lib, q.to(torch.int16), s, x)
    with pytest.raises(ValueError):
        cpu_kernels.gemv_int8(lib, q, s[:4], x)
    with pytest.raises(ValueError):
        cpu_kernels.gemv_int8(lib, q, s.half(), x)
    with pytest.raises(ValueError):
        cpu_kernels.gemv_int8(lib, q, s, x.float())
    with pytest.raises(ValueError):
        cpu_kernels.gemv_int8(lib, q, s, x, out_dtype=torch.float16)
    with pytest.raises(ValueError):
        cpu_kernels.gemv_int8_experts(lib, q[None], s[None], torch.tensor([[1]]), x)  # expert id out of range


@pytest.mark.parametrize("m,topk,scale_dtype", [(1, 8, torch.bfloat16), (3, 2, torch.float32), (5, 4, torch.bfloat16)])
def test_experts_gather_equals_per_expert_gemv(m, topk, scale_dtype, lib):
    g = torch.Generator().manual_seed(m * 10 + topk)
    e, n, k = 12, 200, 704
    q, s = _q(n, k, m, scale_dtype, lead=(e,))
    x = torch.randn(m, k, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=g)[:topk] for _ in range(m)])
    ids[-1, 0] = ids[0, 0]  # an expert shared across tokens
    out = cpu_kernels.gemv_int8_experts(lib, q, s, ids, x, torch.float32)
    assert out.shape == (m, topk, n)
    for i in range(m):
        for j in range(topk):
            ex = int(ids[i, j])
            _close(out[i, j], _ref(q[ex], s[ex], x[i : i + 1])[0], k)
            if int((ids == ex).sum()) < 3:  # groups of 3+ rows take the AMX form where there is one
                assert torch.equal(out[i, j], cpu_kernels.gemv_int8(lib, q[ex], s[ex], x[i : i + 1], torch.float32)[0])
    assert torch.equal(cpu_kernels.gemv_int8_experts(lib, q, s, ids, x), out.bfloat16())


def test_experts_more_than_eight_tokens_on_one_expert(lib):
    q, s = _q(64, 96, 5, lead=(3,))
    x = torch.randn(10, 96).bfloat16()
    out = cpu_kernels.gemv_int8_experts(lib, q, s, torch.tensor([[1, 2]] * 10), x, torch.float32)
    _close(out[:, 0], _ref(q[1], s[1], x), 96)
    _close(out[:, 1], _ref(q[2], s[2], x), 96)


def _count(monkeypatch, name: str) -> list[int]:
    calls = [0]
    real = getattr(cpu_kernels, name)
    monkeypatch.setattr(cpu_kernels, name, lambda *a, **kw: calls.__setitem__(0, calls[0] + 1) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("rows", [1, 8, 9])
def test_int8_linear_takes_the_kernel_for_few_rows(rows, monkeypatch, policy, lib):
    q, s = _q(96, 64, rows)
    x = torch.randn(rows, 64).bfloat16()
    calls = _count(monkeypatch, "gemv_int8")
    out = int8_linear(x, q, s, policy)
    assert calls == [1 if rows <= 8 else 0]
    assert out.shape == (rows, 96) and out.dtype == torch.bfloat16
    ref = _ref(q, s, x)
    # bf16 output: within one rounding (half a bf16 ulp, at most 2^-8 relative) plus the summation order.
    assert bool(((out.float() - ref).abs() <= 2**-8 * ref.abs() + 1e-5 * ref.abs().max()).all())
    if rows <= 8:
        assert torch.equal(out, cpu_kernels.gemv_int8(lib, q, s, x))


@pytest.mark.parametrize("off", ["torch_only", "int8_gemv"])
def test_kernels_off_restores_the_torch_paths(monkeypatch, policy, off):
    q, s = _q(96, 64, 1)
    x = torch.randn(3, 64).bfloat16()
    p = policy.torch_only() if off == "torch_only" else policy.without("int8_gemv")
    monkeypatch.setattr(cpu_kernels, "gemv_int8", lambda *a, **k: pytest.fail("kernel called while disabled"))
    monkeypatch.setattr(cpu_kernels, "gemv_int8_experts", lambda *a, **k: pytest.fail("kernel called while disabled"))
    monkeypatch.setattr(cpu_kernels, "int8_to_bf16", lambda *a, **k: pytest.fail("kernel called while disabled"))
    assert torch.equal(int8_linear(x, q, s, p), torch.ops.aten._weight_int8pack_mm(x, q, s))
    gq, gs = _q(32, 64, 2, lead=(4,))
    dq, ds = _q(64, 16, 3, lead=(4,))
    idx = torch.tensor([[0, 2], [1, 2], [3, 0]])
    w = torch.rand(3, 2)
    got = moe_experts_int8(x, gq, gs, dq, ds, idx, w, p)
    assert got.shape == (3, 64) and bool(torch.isfinite(got).all())


@pytest.mark.parametrize("tokens", [1, 5, 8])
def test_int8_moe_kernel_path_matches_reference(tokens, monkeypatch, policy):
    g = torch.Generator().manual_seed(tokens)
    e, h, i, k = 8, 64, 32, 3
    gq, gs = quantize_per_channel((torch.randn(e, 2 * i, h, generator=g) / 8).bfloat16())
    dq, ds = quantize_per_channel((torch.randn(e, h, i, generator=g) / 6).bfloat16())
    x = torch.randn(tokens, h, generator=g).bfloat16()
    w, idx = torch.rand(tokens, e, generator=g).softmax(-1).topk(k, dim=-1)
    calls = _count(monkeypatch, "gemv_int8_experts")
    fast = moe_experts_int8(x, gq, gs, dq, ds, idx, w, policy)
    assert calls == [2] and fast.shape == (tokens, h) and fast.dtype == torch.bfloat16
    assert torch.equal(fast, quant.moe_gather_int8(x, gq, gs, dq, ds, idx, w, policy))
    # fp32 reference on the dequantised experts; the kernel path rounds the gate_up output and the
    # activation to bf16 (as the bf16 model does) and the sum once.
    want = moe_grouped(x.float(), dequantize(gq, gs, torch.float32), dequantize(dq, ds, torch.float32), idx, w)
    assert float((fast.float() - want).abs().max()) <= 0.02 * float(want.abs().max())
    slow = moe_experts_int8(x, gq, gs, dq, ds, idx, w, dataclasses.replace(policy, int8_moe_max_tokens=0))  # grouped loop
    assert calls == [4] and not torch.equal(slow, fast)  # 2 more by moe_gather_int8 above, none here
    assert float((fast.float() - slow.float()).abs().max()) <= 0.03 * float(want.abs().max())


def test_int8_to_bf16_widening_is_exact_and_feeds_the_many_row_path(policy, lib):
    q = torch.randint(-128, 128, (600, 1001), dtype=torch.int8)  # > 2^18 elements: the threaded split
    assert torch.equal(cpu_kernels.int8_to_bf16(lib, q), q.bfloat16())
    assert torch.equal(cpu_kernels.int8_to_bf16(lib, q[:3, :5].contiguous()), q[:3, :5].bfloat16())
    qq, s = _q(96, 64, 9)
    x = torch.randn(40, 64).bfloat16()  # past int8_gemv_max_rows and int8pack_max_rows: dequantising path
    assert torch.equal(int8_linear(x, qq, s, policy), torch.nn.functional.linear(x, qq.bfloat16()) * s)
