"""ops.paged_decode (the fixed-shape decode attention and MoE of CUDA-graph steps) equals the eager
ops on CPU in fp32: windows, released sliding blocks, mixed context lengths, padding rows."""

from __future__ import annotations

import pytest
import torch

from gemmaserve.ops.attention import build_plan, paged_attention
import gemmaserve.ops.moe as moe_ops
from gemmaserve.ops.moe import moe_capacity, moe_graph, moe_grouped, moe_padded
from gemmaserve.ops.paged_decode import DecodePlan, build_decode_plan, paged_decode, window_first_block

BS = 4
NUM_BLOCKS = 48
PAD_BLOCK = NUM_BLOCKS - 1  # the runner's scratch block: never handed to a request


def _setup(lens: list[int], window: int | None, hkv: int, d: int, seed: int):
    """Random caches where every block no live key sits in is NaN (unassigned, or released because
    it fell out of the window: table entry -1), as PagedSim does; the scratch block is finite (the
    padding rows' own K/V, written before attention runs)."""
    gen = torch.Generator().manual_seed(seed)
    kc = torch.full((NUM_BLOCKS, BS, hkv, d), float("nan"))
    vc = torch.full_like(kc, float("nan"))
    free = torch.randperm(NUM_BLOCKS - 1, generator=gen).tolist()
    tables = []
    for n in lens:
        oldest = 0 if window is None else max(0, n - window)  # oldest key the query sees
        row = []
        for b in range((n + BS - 1) // BS):
            if (b + 1) * BS <= oldest:
                row.append(-1)  # released sliding block
                continue
            blk = free.pop()
            kc[blk] = torch.randn(BS, hkv, d, generator=gen)
            vc[blk] = torch.randn(BS, hkv, d, generator=gen)
            row.append(blk)
        tables.append(row)
    kc[PAD_BLOCK] = torch.randn(BS, hkv, d, generator=gen)
    vc[PAD_BLOCK] = torch.randn(BS, hkv, d, generator=gen)
    return kc, vc, tables


def _padded_tables(tables: list[list[int]], rows: int, width: int, fill: int) -> torch.Tensor:
    out = torch.full((rows, width), fill, dtype=torch.int32)
    for r, t in enumerate(tables):
        out[r, : len(t)] = torch.tensor(t, dtype=torch.int32)
    return out


@pytest.mark.parametrize(
    "lens,window,hkv,d,width",
    [
        ([1, 5, 13, 30, 7], None, 2, 512, 32),  # full layers of 26B-A4B: head_dim 512, 2 KV heads
        ([1, 5, 13, 30, 7], None, 2, 512, 30),  # width exactly the longest row: no padding keys
        ([3, 9, 22, 40, 17], 8, 8, 256, 8),  # sliding: released blocks, width == window
        ([3, 9, 22, 40, 17], 8, 8, 256, 16),  # sliding with a wider bucket than the window
        ([2, 6], 5, 2, 64, 12),  # a window that is not a block multiple
    ],
)
@pytest.mark.parametrize("window_tables", [False, True])
def test_paged_decode_matches_eager_paged_attention(lens, window, hkv, d, width, window_tables):
    if window_tables and window is None:
        pytest.skip("window tables are for windowed kinds")
    hq = 16
    kc, vc, tables = _setup(lens, window, hkv, d, seed=len(lens) + d + width)
    s = len(lens)
    q = torch.randn(s, hq, d, generator=torch.Generator().manual_seed(1))
    nb = max(len(t) for t in tables)
    plan = build_plan(_padded_tables(tables, s, nb, -1), [1] * s, lens, BS, window)
    expected = paged_attention(q, kc, vc, plan)  # [S, Hq, D]
    assert torch.isfinite(expected).all()

    pad_rows = 3
    b = s + pad_rows
    wide = max(nb, (width + BS - 1) // BS) + 2  # a bucket's table is wider than any row needs
    if window_tables:  # each row's table starts at its window's first block, cdiv(window, BS) + 1 wide
        wide = -(-window // BS) + 1
        tables = [t[window_first_block(n, window, BS) :][:wide] for t, n in zip(tables, lens)]
        assert all(-1 not in t for t in tables)
    static_tables = _padded_tables(tables, b, wide, PAD_BLOCK)
    static_tables[s:] = PAD_BLOCK
    seq_lens = torch.tensor(lens + [0] * pad_rows, dtype=torch.int32)
    sp = build_decode_plan(static_tables, seq_lens, BS, window, width, PAD_BLOCK * BS, window_tables)
    assert isinstance(sp, DecodePlan)
    assert sp.slots.shape == (b, width) and sp.mask.shape == (b, 1, 1, width)
    assert int(sp.slots.min()) >= 0
    qs = torch.cat([q, torch.randn(pad_rows, hq, d)])  # [B, Hq, D]
    got = paged_decode(qs, kc, vc, sp)
    # fp32 both ways but summed in different orders: at D 512 the last bits differ by ~1e-5 on AVX512
    # machines without AMX (seen 1.03e-5 on AMD EPYC Zen 4), so the bound is a few ulps of the sum.
    torch.testing.assert_close(got[:s], expected, atol=3e-5, rtol=3e-5)
    assert torch.isfinite(got[s:]).all()  # padding rows: garbage, but never NaN


def test_padding_rows_read_only_the_scratch_block():
    tables = torch.full((2, 3), PAD_BLOCK, dtype=torch.int32)
    tables[0, :2] = torch.tensor([5, 9], dtype=torch.int32)
    plan = build_decode_plan(tables, torch.tensor([6, 0]), BS, None, 8, PAD_BLOCK * BS)
    # Row 0 reads positions 0..5 (blocks 5 and 9), its two masked keys repeat the newest key.
    assert plan.slots[0].tolist() == [20, 21, 22, 23, 36, 37, 37, 37]
    assert plan.mask[0, 0, 0].tolist() == [True] * 6 + [False] * 2
    assert plan.slots[1].tolist() == [PAD_BLOCK * BS] * 8
    assert plan.mask[1, 0, 0].tolist() == [True] + [False] * 7


def test_released_block_inside_window_reads_scratch_not_negative_slot():
    # An upstream bug (a -1 inside the window) must not index memory at a negative slot.
    tables = torch.tensor([[3, -1, 4]], dtype=torch.int32)
    plan = build_decode_plan(tables, torch.tensor([10]), BS, None, 12, PAD_BLOCK * BS)
    assert plan.slots[0].tolist() == [12, 13, 14, 15] + [PAD_BLOCK * BS] * 4 + [16, 17] + [17, 17]


@pytest.mark.parametrize("t", [1, 2, 5, 16])
def test_moe_capacity_matches_grouped_and_padded(t):
    gen = torch.Generator().manual_seed(t)
    e, k, h, i = 8, 3, 32, 12
    x = torch.randn(t, h, generator=gen)
    gate_up = torch.randn(e, 2 * i, h, generator=gen) * 0.2
    down = torch.randn(e, h, i, generator=gen) * 0.2
    idx = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)])
    w = torch.rand(t, k, generator=gen)
    got = moe_capacity(x, gate_up, down, idx, w)
    torch.testing.assert_close(got, moe_grouped(x, gate_up, down, idx, w), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, moe_padded(x, gate_up, down, idx, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [1, 2, 3, 8])
def test_moe_graph_picks_gather_for_few_tokens(t, monkeypatch):
    gen = torch.Generator().manual_seed(10 + t)
    e, k, h, i = 32, 4, 16, 8  # gather while 3 * t * 4 < 32: t <= 2
    x = torch.randn(t, h, generator=gen)
    gate_up = torch.randn(e, 2 * i, h, generator=gen) * 0.2
    down = torch.randn(e, h, i, generator=gen) * 0.2
    idx = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)])
    w = torch.rand(t, k, generator=gen)
    calls = []
    monkeypatch.setattr(moe_ops, "moe_gather_batched", lambda *a: calls.append("gather") or moe_grouped(*a))
    monkeypatch.setattr(moe_ops, "moe_capacity", lambda *a: calls.append("capacity") or moe_capacity(*a))
    got = moe_graph(x, gate_up, down, idx, w)
    assert calls == (["gather"] if t <= 2 else ["capacity"])
    torch.testing.assert_close(got, moe_grouped(x, gate_up, down, idx, w), atol=1e-5, rtol=1e-5)
    monkeypatch.undo()
    torch.testing.assert_close(moe_graph(x, gate_up, down, idx, w), got, atol=1e-5, rtol=1e-5)
