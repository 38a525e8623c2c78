"""Tensor ops against plain references: MoE gather vs grouped paths, paged attention vs dense
masked attention (GQA, head_dim 512, shuffled blocks), RoPE tables vs transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma4TextConfig as HFConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from gemmaserve.ops.attention import build_plan, paged_attention, store_kv
import gemmaserve.ops.moe as moe_ops
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.moe import (
    grouped_mm_ok,
    moe_experts,
    moe_gather,
    moe_gather_batched,
    moe_grouped,
    moe_grouped_mm,
    moe_padded,
)
from gemmaserve.ops.rope import (
    apply_rope,
    apply_rope_signed,
    default_inv_freq,
    proportional_inv_freq,
    rope_cos_sin,
    signed_sin,
)


def _moe_loop(x, gate_up, down, idx, w):
    """Token-by-token reference: out_t = sum_k w_tk * down_e(gelu(gate_e x_t) * up_e x_t)."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(idx.shape[1]):
            e = int(idx[t, k])
            g, u = (gate_up[e] @ x[t]).chunk(2)
            out[t] += w[t, k] * (down[e] @ (F.gelu(g, approximate="tanh") * u))
    return out


@pytest.mark.parametrize("tokens", [1, 3, 16, 65])
def test_moe_paths_agree(tokens):
    gen = torch.Generator().manual_seed(tokens)
    e, h, i, k = 8, 32, 12, 3
    x = torch.randn(tokens, h, generator=gen)
    gate_up = torch.randn(e, 2 * i, h, generator=gen) * 0.2
    down = torch.randn(e, h, i, generator=gen) * 0.2
    idx = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(tokens)])
    w = torch.rand(tokens, k, generator=gen)
    ref = _moe_loop(x, gate_up, down, idx, w)
    torch.testing.assert_close(moe_gather(x, gate_up, down, idx, w), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe_gather_batched(x, gate_up, down, idx, w), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe_grouped(x, gate_up, down, idx, w), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe_padded(x, gate_up, down, idx, w), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe_grouped_mm(x, gate_up, down, idx, w), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe_experts(x, gate_up, down, idx, w, KernelPolicy(moe_grouped_min_tokens=4)), ref,
                               atol=1e-5, rtol=1e-5)


def test_moe_paths_agree_bf16():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 64, generator=gen).bfloat16()
    gate_up = (torch.randn(16, 48, 64, generator=gen) * 0.1).bfloat16()
    down = (torch.randn(16, 64, 24, generator=gen) * 0.1).bfloat16()
    idx = torch.stack([torch.randperm(16, generator=gen)[:4] for _ in range(24)])
    w = torch.softmax(torch.randn(24, 4, generator=gen), -1)
    a, b = moe_gather(x, gate_up, down, idx, w), moe_grouped(x, gate_up, down, idx, w)
    c = moe_padded(x, gate_up, down, idx, w)
    assert a.dtype == b.dtype == c.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(c.float(), b.float(), atol=2e-2, rtol=2e-2)
    d = moe_grouped_mm(x, gate_up, down, idx, w)
    assert d.dtype == torch.bfloat16
    torch.testing.assert_close(d.float(), b.float(), atol=2e-2, rtol=2e-2)


def test_moe_grouped_mm_idle_experts_and_determinism():
    # Experts 0-2 and 5-7 are never chosen (empty groups between busy ones), one token picks the
    # highest expert: group ends must still line up. Two runs give the same bits (no atomics).
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 32, generator=gen)
    gate_up, down = torch.randn(8, 24, 32, generator=gen) * 0.2, torch.randn(8, 32, 12, generator=gen) * 0.2
    idx = torch.tensor([[3, 4], [4, 3], [3, 7], [4, 3], [3, 4], [7, 4]])
    w = torch.rand(6, 2, generator=gen)
    got = moe_grouped_mm(x, gate_up, down, idx, w)
    torch.testing.assert_close(got, _moe_loop(x, gate_up, down, idx, w), atol=1e-5, rtol=1e-5)
    assert torch.equal(got, moe_grouped_mm(x, gate_up, down, idx, w))


def test_grouped_mm_is_cuda_bf16_only_by_default():
    # CPU keeps the per-expert loop (measured mixed, ops/moe.py GROUPED_MM_CPU); fp32 never qualifies.
    bf = torch.zeros(2, 2, dtype=torch.bfloat16)
    assert not grouped_mm_ok(bf, bf)
    assert not grouped_mm_ok(bf.float(), bf.float())


def test_moe_padded_skewed_routing_and_path_choice(monkeypatch):
    """One expert takes every token (padding 8x): still exact; moe_experts picks padded only when
    most experts are busy, so it matches whichever path it took."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 32, generator=gen)
    gate_up, down = torch.randn(4, 24, 32, generator=gen) * 0.2, torch.randn(4, 32, 12, generator=gen) * 0.2
    idx = torch.tensor([[0, 1]] * 8)  # experts 2 and 3 idle: 50% active -> grouped
    w = torch.rand(8, 2, generator=gen)
    taken = []
    monkeypatch.setattr(moe_ops, "moe_padded", lambda *a: taken.append("padded") or moe_padded(*a))
    monkeypatch.setattr(moe_ops, "moe_grouped", lambda *a: taken.append("grouped") or moe_grouped(*a))
    ref = _moe_loop(x, gate_up, down, idx, w)
    torch.testing.assert_close(moe_padded(x, gate_up, down, idx, w), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe_experts(x, gate_up, down, idx, w), ref, atol=1e-5, rtol=1e-5)
    idx = torch.tensor([[0, 1], [2, 3]] * 4)  # all four busy -> padded
    ref = _moe_loop(x, gate_up, down, idx, w)
    torch.testing.assert_close(moe_experts(x, gate_up, down, idx, w), ref, atol=1e-5, rtol=1e-5)
    assert taken == ["grouped", "padded"]


@pytest.mark.parametrize("spread,path", [("even", "padded"), ("skewed", "grouped")])
def test_many_tokens_take_padded_only_when_padding_is_cheap(monkeypatch, spread, path):
    """Past the policy's moe_padded_max_tokens the padded path is taken when padding adds at most
    moe_padded_max_waste rows (tokens spread evenly over the experts), else the grouped loop; both = the
    per-pair loop."""
    t, e = KernelPolicy().moe_padded_max_tokens + 36, 4
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(t, 32, generator=gen)
    gate_up, down = torch.randn(e, 24, 32, generator=gen) * 0.2, torch.randn(e, 32, 12, generator=gen) * 0.2
    if spread == "even":  # every expert chosen 50 times: no padding
        idx = torch.tensor([[i % e, (i + 1) % e] for i in range(t)])
    else:  # expert 0 in every token: padding to its t rows is 2x
        idx = torch.tensor([[0, 1 + i % (e - 1)] for i in range(t)])
    w = torch.rand(t, 2, generator=gen)
    taken = []
    monkeypatch.setattr(moe_ops, "moe_padded", lambda *a: taken.append("padded") or moe_padded(*a))
    monkeypatch.setattr(moe_ops, "moe_grouped", lambda *a: taken.append("grouped") or moe_grouped(*a))
    torch.testing.assert_close(moe_experts(x, gate_up, down, idx, w), _moe_loop(x, gate_up, down, idx, w),
                               atol=1e-5, rtol=1e-5)
    assert taken == [path]


def _dense_attention(q, k, v, window):
    """q [N, Hq, D], k/v [N, Hkv, D] of one whole sequence -> [N, Hq, D], causal + window."""
    n, hq, _ = q.shape
    rep = hq // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k)  # scale 1.0
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    visible = (j <= i) & ((j > i - window) if window else True)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)
    return torch.einsum("hqk,khd->qhd", probs, v)


@pytest.mark.parametrize("window,hkv,d", [(None, 1, 512), (6, 2, 16), (5, 4, 32)])
def test_paged_attention_matches_dense(window, hkv, d):
    gen = torch.Generator().manual_seed(d)
    bs, hq = 4, 8
    lens = [(23, 23), (1, 19), (7, 30), (1, 3), (1, 26)]  # (new tokens, seq_len) per sequence
    kc = torch.full((64, bs, hkv, d), float("nan"))
    vc = torch.full((64, bs, hkv, d), float("nan"))
    perm = torch.randperm(64, generator=gen).tolist()  # blocks scattered through the pool
    tables, full_q, full_k, full_v, rows = [], [], [], [], []
    for new, total in lens:
        nb = -(-total // bs)
        table = [perm.pop() for _ in range(nb)]
        # q.k ~ N(0, 1) whatever d is, so fp32 round-off stays far below the tolerance.
        q, k, v = (torch.randn(total, n, d, generator=gen) * d**-0.25 for n in (hq, hkv, hkv))
        ctx = total - new
        slots = torch.tensor([table[p // bs] * bs + p % bs for p in range(total)])
        store_kv(kc, vc, k[:ctx], v[:ctx], slots[:ctx])  # context already cached
        if window:  # release blocks wholly out of every query's window
            oldest = ctx - window + 1
            for b in range(nb):
                if (b + 1) * bs <= oldest:
                    table[b] = -1
        tables.append(table + [-1] * (8 - nb))
        full_q.append(q), full_k.append(k), full_v.append(v), rows.append((ctx, slots[ctx:]))
    bt = torch.tensor(tables, dtype=torch.int32)
    q_new = torch.cat([q[ctx:] for q, (ctx, _) in zip(full_q, rows)])
    k_new = torch.cat([k[ctx:] for k, (ctx, _) in zip(full_k, rows)])
    v_new = torch.cat([v[ctx:] for v, (ctx, _) in zip(full_v, rows)])
    store_kv(kc, vc, k_new, v_new, torch.cat([s for _, s in rows]))
    plan = build_plan(bt, [n for n, _ in lens], [t for _, t in lens], bs, window)
    # Decode key counts 19, 3, 26 (unbounded) split into {26, 19} and {3}; windowed they stay one.
    assert [g.rows.tolist() for g in plan.decodes] == ([[23, 32], [31]] if window is None else [[23, 31, 32]])
    out = paged_attention(q_new, kc, vc, plan)
    expected = torch.cat(
        [_dense_attention(q, k, v, window)[ctx:] for q, k, v, (ctx, _) in zip(full_q, full_k, full_v, rows)]
    )
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_released_block_inside_window_is_refused():
    tables = torch.tensor([[-1, -1, 7, 8]], dtype=torch.int32)  # positions 0..7 released
    plan = build_plan(tables, [1], [15], 4, window=7)  # query at 14 sees 8..14: fine
    assert len(plan.decodes) == 1 and plan.decodes[0].slots.tolist() == [[28, 29, 30, 31, 32, 33, 34]]
    with pytest.raises(ValueError, match="released"):
        build_plan(tables, [1], [15], 4, window=8)  # would need position 7 (block 1)
    with pytest.raises(ValueError, match="released"):
        build_plan(tables, [3], [15], 4, window=7)  # first query (pos 12) sees 6..12


def test_rope_tables_match_transformers():
    cfg = HFConfig(head_dim=256, global_head_dim=512, num_global_key_value_heads=2, attention_k_eq_v=True,
                   hidden_size=64, num_attention_heads=4, num_hidden_layers=6)
    ref_full, _ = ROPE_INIT_FUNCTIONS["proportional"](cfg, "cpu", layer_type="full_attention")
    ours_full = proportional_inv_freq(512, 1_000_000.0, 0.25)
    assert ours_full.shape == (256,) and int((ours_full > 0).sum()) == 64
    torch.testing.assert_close(ours_full, ref_full, atol=0, rtol=0)
    ref_local = 1.0 / (10_000.0 ** (torch.arange(0, 256, 2).float() / 256))
    torch.testing.assert_close(default_inv_freq(256, 10_000.0), ref_local, atol=0, rtol=0)


def test_partial_rope_leaves_unrotated_dims_unchanged():
    x = torch.randn(5, 2, 512)
    cos, sin = rope_cos_sin(torch.arange(100, 105), proportional_inv_freq(512, 1e6, 0.25), torch.float32)
    y = apply_rope(x, cos, sin)
    moved = (y - x).abs().amax(dim=(0, 1)) > 1e-6  # [512]
    expected = torch.zeros(512, dtype=torch.bool)
    expected[:64] = expected[256:320] = True  # pairs (j, j + 256) for j < 64
    assert torch.equal(moved, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_signed_rope_is_bit_identical(dtype):
    x = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(3)).to(dtype)
    cos, sin = rope_cos_sin(torch.tensor([0, 7, 300]), default_inv_freq(32, 10_000.0), dtype)
    s = signed_sin(sin)
    assert torch.equal(s[..., :16], -sin[..., :16]) and torch.equal(s[..., 16:], sin[..., 16:])
    assert torch.equal(apply_rope_signed(x, cos, signed_sin(sin)), apply_rope(x, cos, sin))


def test_in_order_decode_group_returns_sdpa_rows_directly():
    gen = torch.Generator().manual_seed(5)
    kc, vc = torch.randn(16, 4, 2, 16, generator=gen), torch.randn(16, 4, 2, 16, generator=gen)
    tables = torch.tensor([[0, 1, 2], [5, 6, 7], [9, 10, 11]], dtype=torch.int32)
    q = torch.randn(3, 8, 16, generator=gen)
    plan = build_plan(tables, [1, 1, 1], [9, 10, 11], 4, None)
    assert len(plan.decodes) == 1 and plan.decodes[0].in_order and plan.decodes[0].rows.tolist() == [0, 1, 2]
    fast = paged_attention(q, kc, vc, plan)
    plan.decodes[0].in_order = False  # the scatter path
    torch.testing.assert_close(fast, paged_attention(q, kc, vc, plan), atol=0, rtol=0)
    k = kc.view(-1, 2, 16)[:9].repeat_interleave(4, dim=1)  # row 0 reads positions 0..8 of blocks 0-2
    v = vc.view(-1, 2, 16)[:9].repeat_interleave(4, dim=1)
    ref = torch.softmax(torch.einsum("hd,lhd->hl", q[0], k), dim=-1)
    torch.testing.assert_close(fast[0], torch.einsum("hl,lhd->hd", ref, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_experts_with_no_tokens(dtype):
    # A last layer that keeps no rows (a step where nothing samples) routes zero tokens: every path
    # must return [0, H], not fail on an empty reshape.
    gate_up, down = torch.zeros(8, 24, 32, dtype=dtype), torch.zeros(8, 32, 12, dtype=dtype)
    out = moe_experts(torch.zeros(0, 32, dtype=dtype), gate_up, down, torch.zeros(0, 2, dtype=torch.int64),
                      torch.zeros(0, 2))
    assert out.shape == (0, 32) and out.dtype == dtype
