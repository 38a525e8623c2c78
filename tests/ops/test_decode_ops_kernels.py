"""CPU decode kernels one by one against fp32/fp64 references and torch's ops: RMSNorm, paged decode
attention, GeGLU, the threaded GEMV's work split and the expert gather's single parallel region."""

from __future__ import annotations

import pytest
import torch

from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.attention import build_plan, paged_attention
from gemmaserve.ops.norm import rms_norm


@pytest.mark.parametrize("rows,d,weighted", [(1, 1024, True), (8, 128, True), (3, 33, True), (5, 64, False)])
def test_rms_norm_kernel_matches_torch(rows, d, weighted, policy, lib):
    g = torch.Generator().manual_seed(rows * d)
    x = (3 * torch.randn(rows, 2, d, generator=g)).bfloat16()[:, 1]  # strided rows
    w = (1 + 0.3 * torch.randn(d, generator=g)).bfloat16() if weighted else None
    out = cpu_kernels.rms_norm(lib, x, w, 1e-6)
    ref = torch.nn.functional.rms_norm(x, (d,), w, 1e-6)  # fp32 inside, one rounding
    assert out.shape == x.shape and out.dtype == torch.bfloat16 and out.is_contiguous()
    # Same formula; only the order of the sum of squares differs: at most one bf16 ulp, rarely.
    ulp = torch.finfo(torch.bfloat16).eps * ref.float().abs()
    assert bool(((out.float() - ref.float()).abs() <= ulp).all())
    assert float((out != ref).float().mean()) < 0.02
    assert torch.equal(rms_norm(x, w, 1e-6, policy), out)  # the op dispatches here for small bf16 inputs


def _attn_ref(q, kc, vc, slots, n_keys, scale):
    """fp32 attention of each row's query heads over its first n_keys cached rows."""
    hkv, d = kc.shape[-2:]
    kf, vf = kc.reshape(-1, hkv, d).float(), vc.reshape(-1, hkv, d).float()
    out = torch.empty(q.shape)
    g = q.shape[1] // hkv
    for s in range(q.shape[0]):
        idx = slots[s, : int(n_keys[s])]
        k, v = kf[idx].repeat_interleave(g, 1), vf[idx].repeat_interleave(g, 1)  # [L, Hq, D]
        p = torch.softmax(torch.einsum("hd,lhd->hl", q[s].float(), k) * scale, dim=-1)
        out[s] = torch.einsum("hl,lhd->hd", p, v)
    return out


@pytest.mark.parametrize("hq,hkv,d", [(8, 2, 128), (8, 1, 256), (4, 4, 64), (6, 2, 32), (3, 1, 24), (16, 2, 16)])
def test_decode_attention_kernel_matches_fp32(hq, hkv, d, lib):
    # G = 4, 8, 1, 3 (portable path), 3 with D % 16 != 0, 8 with D = 16.
    g = torch.Generator().manual_seed(hq * 100 + d)
    kc = torch.randn(40, 4, hkv, d, generator=g).bfloat16()
    vc = torch.randn(40, 4, hkv, d, generator=g).bfloat16()
    lens = [1, 17, 33, 160]
    slots = torch.randint(0, 160, (4, 160), generator=g)  # any order, repeats allowed
    n_keys = torch.tensor(lens)
    q = torch.randn(4, hq, d, generator=g).bfloat16()
    out = cpu_kernels.decode_attention(lib, q, kc, vc, slots, n_keys, 0.3)
    ref = _attn_ref(q, kc, vc, slots, n_keys, 0.3)
    assert out.shape == (4, hq, d) and out.dtype == torch.bfloat16
    err = (out.float() - ref).abs()
    assert bool((err <= 2 ** -8 * ref.abs() + 1e-4).all()), float(err.max())


@pytest.mark.parametrize("hq,hkv,d", [(8, 2, 128), (8, 1, 256), (4, 4, 64), (4, 2, 32), (8, 1, 512)])
def test_decode_attention_over_paged_blocks_matches_fp32(hq, hkv, d, lib):
    # Keys in whole 16-slot blocks take the AMX score tiles where the CPU has them (G = 4, 8, 1, 2;
    # D up to 512); a block broken by one moved slot, and tails shorter than a block, take the vector
    # path in the same call. Scale != 1 checks it multiplies the tile's bf16 dot products.
    g = torch.Generator().manual_seed(hq * 7 + d)
    kc = torch.randn(64, 16, hkv, d, generator=g).bfloat16()
    vc = torch.randn(64, 16, hkv, d, generator=g).bfloat16()
    blocks = torch.randperm(64, generator=g)[:40].view(4, 10)  # each row: 10 blocks in any order
    slots = (blocks[:, :, None] * 16 + torch.arange(16)).reshape(4, 160)  # [4, 160]
    slots[2, 37] = slots[2, 0]  # row 2's third block is no longer 16 consecutive slots
    lens = [16, 47, 160, 129]
    q = torch.randn(4, hq, d, generator=g).bfloat16()
    for scale in (1.0, 0.3):
        out = cpu_kernels.decode_attention(lib, q, kc, vc, slots, torch.tensor(lens), scale)
        ref = _attn_ref(q, kc, vc, slots, torch.tensor(lens), scale)
        err = (out.float() - ref).abs()
        assert bool((err <= 2 ** -8 * ref.abs() + 1e-4).all()), float(err.max())


def test_paged_attention_kernel_agrees_with_torch_on_mixed_plans(policy):
    # Two decode groups (key counts 600 vs 20: not within 2x) out of row order, beside a prefill.
    g = torch.Generator().manual_seed(5)
    bs, hkv, d, hq = 4, 2, 64, 8
    kc = torch.randn(400, bs, hkv, d, generator=g).bfloat16()
    vc = torch.randn(400, bs, hkv, d, generator=g).bfloat16()
    tables = torch.arange(400, dtype=torch.int32).view(2, 200)
    tables = torch.cat([tables, tables.flip(1), tables[:, 50:].repeat(1, 2)[:, :200]])  # [6, 200]
    q_lens, seq_lens = [1, 5, 1, 1, 1, 1], [20, 30, 600, 22, 599, 21]
    plan = build_plan(tables, q_lens, seq_lens, bs, None)
    assert len(plan.decodes) == 2 and not any(grp.in_order for grp in plan.decodes)
    q = torch.randn(sum(q_lens), hq, d, generator=g).bfloat16()
    off = policy.without("decode_attention")
    fast = paged_attention(q, kc, vc, plan, policy=policy)
    slow = paged_attention(q, kc, vc, plan, policy=off)
    assert torch.equal(fast[1:6], slow[1:6])  # prefill rows take the same torch path
    err = (fast.float() - slow.float()).abs()
    assert float(err.max()) <= 2 ** -6 * float(slow.float().abs().max())
    # Window-limited plan: the kernel reads only the window's keys.
    plan_w = build_plan(tables, q_lens, seq_lens, bs, 16)
    fast_w = paged_attention(q, kc, vc, plan_w, policy=policy)
    slow_w = paged_attention(q, kc, vc, plan_w, policy=off)
    assert float((fast_w.float() - slow_w.float()).abs().max()) <= 2 ** -6 * float(slow_w.float().abs().max())


def test_geglu_kernel_rounds_like_torch(lib):
    g = torch.Generator().manual_seed(11)
    gu = torch.cat([4 * torch.randn(6, 200, generator=g), torch.tensor([[-30.0, -9.0, 0.0, 1e-4, 9.0, 30.0] * 2] * 6)], 1)
    gu = gu.bfloat16()  # [6, 212]: gate = first 106 columns, up = last 106
    gate, up = gu.chunk(2, dim=-1)
    torch_ref = torch.nn.functional.gelu(gate, approximate="tanh") * up
    # gelu_tanh(x) = x * sigmoid(2y) exactly (fp64), with torch's rounding points: bf16 gelu, bf16 product.
    x = gate.double()
    ref = (x * torch.sigmoid(2 * 0.7978845608028654 * (x + 0.044715 * x**3))).bfloat16() * up
    out = cpu_kernels.geglu(lib, gu)
    assert out.shape == (6, 106) and out.dtype == torch.bfloat16
    body = gate.float() > -5  # below, gelu < 1e-5 * |x| and fp32 exp's relative error grows with |2y|
    assert float((out != ref)[body].float().mean()) < 0.01  # rare ties at a bf16 rounding boundary
    assert bool(((out.float() - ref.float()).abs() <= 2**-7 * ref.float().abs())[body].all())
    assert bool((out.float().abs() <= 1e-5 * up.float().abs() * gate.float().abs())[~body].all())
    # torch's fp32 tanh loses the negative tail (1 + tanh cancels) where the kernel does not; elsewhere
    # both agree.
    assert float((out != torch_ref)[gate.float() > -3].float().mean()) < 0.01


@pytest.mark.parametrize("e,i,n", [(3, 40, 37), (8, 256, 40)])  # 37: a vector tail; 8x256x40: threaded
def test_weighted_column_geglu_equals_the_row_kernel_and_torch(e, i, n, policy, lib):
    # moe_padded's layout: gu [E, 2I, n] (gate rows, then up rows, token columns), weights [E, n].
    import gemmaserve.ops.activation as act_op

    g = torch.Generator().manual_seed(e * i + n)
    gu = (3 * torch.randn(e, 2 * i, n, generator=g)).bfloat16()
    w = torch.rand(e, n, generator=g).bfloat16()
    out = act_op.geglu_weighted_cols(gu, w, policy)
    assert out.shape == (e, i, n) and out.dtype == torch.bfloat16
    # Per expert: the row kernel on the transposed rows, then torch's bf16 weighting: bit-equal.
    for x in range(e):
        rows = cpu_kernels.geglu(lib, gu[x].t().contiguous())  # [n, I]
        assert torch.equal(out[x], rows.t() * w[x])
    slow = act_op.geglu_weighted_cols(gu, w, policy.without("geglu"))  # torch's gelu, mul, mul
    body = gu[:, :i].float() > -3  # torch's fp32 tanh loses the far negative tail (see above)
    assert float((out != slow)[body].float().mean()) < 0.01


@pytest.mark.parametrize("n", [64, 1000, 4099])
def test_gemv_dynamic_chunks_equal_static_split(n, lib):
    """The threaded GEMV's dynamic row chunks (default) give the static split's result exactly."""
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, 1024, generator=g).bfloat16()
    x = torch.randn(3, 1024, generator=g).bfloat16()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lib.fn.gs_gemv_set_chunks(0)
        static = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
        lib.fn.gs_gemv_set_chunks(8)
        chunked = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
    finally:
        lib.fn.gs_gemv_set_chunks(8)
        torch.set_num_threads(before)
    assert torch.equal(static, chunked)
    assert float((chunked - x.float() @ w.float().T).abs().max()) < 1e-3 * 32


@pytest.mark.parametrize("m,topk", [(1, 4), (3, 2), (8, 4), (13, 4)])
def test_expert_gather_one_region_equals_per_expert_loop(m, topk, lib):
    """All chosen experts in one parallel region (default) == one region per expert, bit for bit,
    including experts shared by more than 8 pairs (split into groups of 8)."""
    g = torch.Generator().manual_seed(m * 10 + topk)
    w = torch.randn(6, 64, 96, generator=g).bfloat16()
    x = torch.randn(m, 96, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(6, generator=g)[:topk] for _ in range(m)])  # [M, topk]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outs = []
        for merged in (0, 1):
            lib.fn.gs_gemv_set_experts_merged(merged)
            outs.append([cpu_kernels.gemv_experts(lib, w, ids, x, dt) for dt in (torch.float32, torch.bfloat16)])
    finally:
        lib.fn.gs_gemv_set_experts_merged(1)
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    ref = torch.einsum("mjnk,mk->mjn", w[ids].float(), x.float())  # [M, topk, N]
    assert float((outs[1][0] - ref).abs().max()) < 1e-3


def test_prefill_geglu_and_norm_take_the_threaded_kernels_with_per_row_results(monkeypatch, policy, lib):
    # Prefill sizes: the GeGLU of a fused gate_up projection's two halves and the RMSNorm run on the
    # kernels, split over threads, and every row equals the same row computed alone (one thread).
    from gemmaserve.ops.activation import gelu_tanh_mul
    from gemmaserve.ops.norm import rms_norm

    calls: list[str] = []
    real_geglu = cpu_kernels.geglu
    monkeypatch.setattr(cpu_kernels, "geglu", lambda *a: calls.append("gs_geglu_bf16") or real_geglu(*a))
    g = torch.Generator().manual_seed(5)
    gu = (2 * torch.randn(300, 2 * 512, generator=g)).bfloat16()  # [T, 2W]
    gate, up = gu.chunk(2, dim=-1)
    out = gelu_tanh_mul(gate, up, policy)
    assert calls == ["gs_geglu_bf16"]
    assert torch.equal(out, real_geglu(lib, gu))
    assert torch.equal(out[::37], torch.cat([real_geglu(lib, gu[i : i + 1]) for i in range(0, 300, 37)]))
    torch_ref = torch.nn.functional.gelu(gate, approximate="tanh") * up
    assert float((out != torch_ref)[gate.float() > -3].float().mean()) < 0.01
    # Not the two halves of one tensor, or decode-sized: torch's ops, exactly.
    g2, u2 = gate.contiguous(), up.contiguous()
    assert torch.equal(gelu_tanh_mul(g2, u2, policy), torch.nn.functional.gelu(g2, approximate="tanh") * u2)
    small_g, small_u = gu[:4].chunk(2, dim=-1)
    assert torch.equal(gelu_tanh_mul(small_g, small_u, policy), torch.nn.functional.gelu(small_g, approximate="tanh") * small_u)
    assert calls == ["gs_geglu_bf16"]

    x = (3 * torch.randn(600, 1024, generator=g)).bfloat16()  # [T, H] above the threading threshold
    w = torch.randn(1024, generator=g).bfloat16()
    y = rms_norm(x, w, 1e-6, policy)
    assert torch.equal(y[::50], torch.cat([cpu_kernels.rms_norm(lib, x[i : i + 1], w, 1e-6) for i in range(0, 600, 50)]))
    ref = torch.nn.functional.rms_norm(x.float(), (1024,), w.float(), 1e-6).bfloat16()
    assert bool(((y.float() - ref.float()).abs() <= 2**-7 * ref.float().abs() + 1e-6).all())
