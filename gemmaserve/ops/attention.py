"""Attention over a paged KV cache: store new K/V by slot mapping, then causal (optionally
sliding-window) GQA attention of each query row over its own sequence's cached keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KernelPolicy


@dataclass
class PrefillSeq:
    """One sequence with more than one new token: attended on its own (its rows are contiguous)."""

    row_start: int
    row_end: int
    slots: torch.Tensor  # [L] int64 flat cache slots of the keys it reads, in position order
    mask: torch.Tensor | None  # [Q, L] bool (True = visible); None = plain causal with Q == L


@dataclass
class DecodeGroup:
    """Sequences with a single new token and key counts within 2x of each other: one padded gather
    and one SDPA call for all of them."""

    rows: torch.Tensor  # [Sd] int64 rows of T
    slots: torch.Tensor  # [Sd, L] int64 cache slots (padding repeats a visible slot)
    mask: torch.Tensor | None  # [Sd, 1, 1, L] bool, None when all Sd read exactly L keys
    in_order: bool = False  # rows are exactly 0..Sd-1
    n_keys: torch.Tensor | None = None  # [Sd] int64 visible keys per row: slots[i, :n_keys[i]]


@dataclass
class AttentionPlan:
    """Where each query row reads its keys from, for one attention kind; built once per forward
    and shared by every layer of that kind (same block tables, same window)."""

    decodes: list[DecodeGroup] = field(default_factory=list)
    prefills: list[PrefillSeq] = field(default_factory=list)


def build_plan(
    block_tables: torch.Tensor,
    query_lens: list[int],
    seq_lens: list[int],
    block_size: int,
    window: int | None,
    blocks: list[list[tuple[int, int]]] | None = None,
) -> AttentionPlan:
    """block_tables [S, max_blocks] int32 (-1 = released/unassigned). Query i of a sequence sits at
    position seq_len - q_len + i and sees key j iff j <= i and (window is None or j > i - window).
    Only positions some query can see are ever addressed, so released blocks (which lie wholly
    before the oldest visible key) are never read. blocks[s] (optional) lists position ranges
    [start, end) within sequence s's new tokens that attend bidirectionally: there key j is also
    visible to query i when both lie in one range, the window still applying
    (`(j <= i or same block) and j > i - window`, transformers' vision mask on sliding layers)."""
    device = block_tables.device
    tables = block_tables.long()
    plan = AttentionPlan()
    dec_seqs: list[int] = []
    dec_rows: list[int] = []
    row = 0
    for s, (q_len, seq_len) in enumerate(zip(query_lens, seq_lens)):
        ctx = seq_len - q_len  # tokens cached before this step
        if q_len == 1:
            dec_seqs.append(s)
            dec_rows.append(row)
        elif q_len > 1:
            lo = 0 if window is None else max(0, ctx - window + 1)  # oldest key the first query sees
            kpos = torch.arange(lo, seq_len, device=device)  # [L]
            slots = tables[s, kpos // block_size] * block_size + kpos % block_size
            mask = None
            spans = blocks[s] if blocks is not None else []
            if ctx != 0 or (window is not None and window < q_len) or spans:
                qpos = torch.arange(ctx, seq_len, device=device)[:, None]  # [Q, 1]
                mask = kpos[None, :] <= qpos
                for a, b in spans:  # [Q, L] block overlay: a block's rows see all its columns
                    mask[a - ctx : b - ctx, a - lo : b - lo] = True
                if window is not None:
                    mask &= kpos[None, :] > qpos - window
            _check_assigned(slots)
            plan.prefills.append(PrefillSeq(row, row + q_len, slots, mask))
        row += q_len
    # Padding every decode row to the longest context would multiply the work of short ones
    # (a 32K-token request beside 100-token ones); groups whose key counts are within 2x of their
    # longest bound the padding waste at 2x with only a few groups.
    keys = {s: seq_lens[s] if window is None else min(seq_lens[s], window) for s in dec_seqs}
    order = sorted(range(len(dec_seqs)), key=lambda i: -keys[dec_seqs[i]])
    while order:
        longest = keys[dec_seqs[order[0]]]
        n = 1
        while n < len(order) and 2 * keys[dec_seqs[order[n]]] >= longest:
            n += 1
        members, order = sorted(order[:n]), order[n:]  # row order: one group of all rows needs no scatter
        plan.decodes.append(_decode_group([dec_seqs[i] for i in members], [dec_rows[i] for i in members],
                                          [keys[dec_seqs[i]] for i in members], seq_lens, tables, block_size))
    return plan


def build_row_plan(
    block_tables: torch.Tensor,
    query_lens: list[int],
    seq_lens: list[int],
    block_size: int,
    window: int | None,
    blocks: list[list[tuple[int, int]]] | None = None,
) -> AttentionPlan:
    """Every query row, prefill or decode, as its own one-query attention over its visible keys in
    position order (one decode group in row order): a row's result then depends only on its position
    and its keys, never on whether it came in a prefill, a chunk or a decode step (batch-invariant
    mode, ops/batch_invariant.py). Same arguments and visibility rule as build_plan; a row inside a
    bidirectional block also sees the block's later keys (all written before attention runs)."""
    device = block_tables.device
    tables = block_tables.long()
    seq_of, lo, hi = [], [], []
    for s, (q_len, seq_len) in enumerate(zip(query_lens, seq_lens)):
        seq_of += [s] * q_len
        for i in range(seq_len - q_len, seq_len):
            end = next((b for a, b in (blocks[s] if blocks is not None else []) if a <= i < b), i + 1)
            lo.append(0 if window is None else max(0, i - window + 1))
            hi.append(max(i + 1, end))  # one past the newest visible key
    if not seq_of:
        return AttentionPlan()
    lo_t = torch.tensor(lo, device=device)  # [T] oldest visible key
    n_keys = torch.tensor(hi, device=device) - lo_t  # [T]
    lo = lo_t
    width = int(n_keys.max())
    ar = torch.arange(width, device=device)[None, :]  # [1, L]
    pos = torch.where(ar < n_keys[:, None], lo[:, None] + ar, lo[:, None])  # [T, L] padded with a visible key
    blocks = tables[torch.tensor(seq_of, device=device)].gather(1, pos // block_size)  # [T, L]
    slots = blocks * block_size + pos % block_size
    _check_assigned(slots)
    mask = (ar < n_keys[:, None])[:, None, None, :]  # [T, 1, 1, L], for the SDPA fallback
    rows = torch.arange(len(seq_of), device=device)
    return AttentionPlan(decodes=[DecodeGroup(rows, slots, mask, True, n_keys)])


def _decode_group(
    seqs: list[int], rows: list[int], lens: list[int], seq_lens: list[int], tables: torch.Tensor, block_size: int
) -> DecodeGroup:
    device = tables.device
    hi = torch.tensor([seq_lens[s] for s in seqs], device=device)  # [Sd] one past the newest key
    n_keys = torch.tensor(lens, device=device)  # [Sd]
    lo = hi - n_keys  # [Sd] oldest visible key
    width = max(lens)
    ar = torch.arange(width, device=device)[None, :]  # [1, L]
    valid = ar < n_keys[:, None]  # [Sd, L]
    pos = torch.where(valid, lo[:, None] + ar, lo[:, None])  # pad with a visible position
    blocks = tables[torch.tensor(seqs, device=device)].gather(1, pos // block_size)  # [Sd, L]
    slots = blocks * block_size + pos % block_size
    _check_assigned(slots)
    mask = None if min(lens) == width else valid[:, None, None, :]
    return DecodeGroup(torch.tensor(rows, device=device), slots, mask, rows == list(range(len(rows))), n_keys)


def _check_assigned(slots: torch.Tensor) -> None:
    # A -1 block inside the window would silently address another block's memory (negative
    # index); a release bug upstream must fail loudly instead of corrupting attention.
    if slots.numel() and int(slots.min()) < 0:
        raise ValueError("attention needs a KV block that the block table marks released (-1)")


def store_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k/v [T, Hkv, D] into caches [num_blocks, block_size, Hkv, D] at flat slots [T]."""
    hkv, d = k_cache.shape[-2:]
    k_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttentionPlan, scale: float = 1.0,
    policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """q [T, Hq, D] -> [T, Hq, D]; softmax in fp32 inside SDPA; GQA head h uses KV head h // (Hq/Hkv).
    bf16 decode groups on CPU take the decode-attention kernel (policy "decode_attention"): one call reads
    the cache rows in place instead of two index_select copies, two casts and SDPA."""
    hkv, d = k_cache.shape[-2:]
    hq = q.shape[1]
    group = hq // hkv
    kc = k_cache.view(-1, hkv, d)
    vc = v_cache.view(-1, hkv, d)
    # A pure decode step whose rows form one group in row order (the common case: similar context
    # lengths) returns the SDPA result directly, without an output buffer and row scatter.
    whole = not plan.prefills and len(plan.decodes) == 1 and plan.decodes[0].in_order
    out = None if whole else torch.empty_like(q)
    p = policy or KernelPolicy.default()
    kernel = bool(plan.decodes) and p.takes("decode_attention", k_cache, v_cache, strided=(q,))
    # index_select, not kc[slots]: advanced indexing of the cache rows measured ~3x slower on CPU
    # (1.84 vs 0.63 ms for 32 x 528 rows of [2, 128] bf16, one thread).
    for g in plan.decodes:
        sd = g.rows.shape[0]
        if kernel and g.n_keys is not None:
            o = cpu_kernels.decode_attention(p.lib, q if whole else q[g.rows], k_cache, v_cache, g.slots, g.n_keys, scale)
            if whole:
                return o  # [Sd, Hq, D]
            out[g.rows] = o
            continue
        k = kc.index_select(0, g.slots.view(-1)).view(sd, -1, hkv, d).to(q.dtype).transpose(1, 2)  # [Sd, Hkv, L, D]
        v = vc.index_select(0, g.slots.view(-1)).view(sd, -1, hkv, d).to(q.dtype).transpose(1, 2)  # [Sd, Hkv, L, D]
        # One query per sequence: a KV head's `group` query heads become its query rows, so no KV
        # head is ever repeated.
        qd = (q if whole else q[g.rows]).view(sd, hkv, group, d)  # [Sd, Hkv, G, D]
        o = F.scaled_dot_product_attention(qd, k, v, attn_mask=g.mask, scale=scale)
        if whole:
            return o.reshape(sd, hq, d)
        out[g.rows] = o.reshape(sd, hq, d)
    for p in plan.prefills:
        k = kc.index_select(0, p.slots).to(q.dtype).transpose(0, 1)[None]  # [1, Hkv, L, D]
        v = vc.index_select(0, p.slots).to(q.dtype).transpose(0, 1)[None]
        qp = q[p.row_start : p.row_end].transpose(0, 1)[None]  # [1, Hq, Q, D]
        o = F.scaled_dot_product_attention(
            qp, k, v, attn_mask=p.mask, is_causal=p.mask is None, scale=scale, enable_gqa=group > 1
        )  # [1, Hq, Q, D]
        out[p.row_start : p.row_end] = o[0].transpose(0, 1)
    return out
