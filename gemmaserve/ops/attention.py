"""Attention over a paged KV cache: store new K/V by slot mapping, then causal (optionally
sliding-window) GQA attention of each query row over its own sequence's cached keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class PrefillSeq:
    """One sequence with more than one new token: attended on its own (its rows are contiguous)."""

    row_start: int
    row_end: int
    slots: torch.Tensor  # [L] int64 flat cache slots of the keys it reads, in position order
    mask: torch.Tensor | None  # [Q, L] bool (True = visible); None = plain causal with Q == L


@dataclass
class AttentionPlan:
    """Where each query row reads its keys from, for one attention kind; built once per forward
    and shared by every layer of that kind (same block tables, same window)."""

    decode_rows: torch.Tensor | None = None  # [Sd] int64 rows of T with a single new token
    decode_slots: torch.Tensor | None = None  # [Sd, L] int64 cache slots (padding repeats a valid slot)
    decode_mask: torch.Tensor | None = None  # [Sd, 1, 1, L] bool, None when all Sd read exactly L keys
    prefills: list[PrefillSeq] = field(default_factory=list)


def build_plan(
    block_tables: torch.Tensor,
    query_lens: list[int],
    seq_lens: list[int],
    block_size: int,
    window: int | None,
) -> AttentionPlan:
    """block_tables [S, max_blocks] int32 (-1 = released/unassigned). Query i of a sequence sits at
    position seq_len - q_len + i and sees key j iff j <= i and (window is None or j > i - window).
    Only positions some query can see are ever addressed, so released blocks (which lie wholly
    before the oldest visible key) are never read."""
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
            if ctx != 0 or (window is not None and window < q_len):
                qpos = torch.arange(ctx, seq_len, device=device)[:, None]  # [Q, 1]
                mask = kpos[None, :] <= qpos
                if window is not None:
                    mask &= kpos[None, :] > qpos - window
            _check_assigned(slots)
            plan.prefills.append(PrefillSeq(row, row + q_len, slots, mask))
        row += q_len
    if dec_seqs:
        hi = torch.tensor([seq_lens[s] for s in dec_seqs], device=device)  # [Sd]
        lo = torch.zeros_like(hi) if window is None else (hi - window).clamp(min=0)  # [Sd]
        lens_cpu = [seq_lens[s] if window is None else min(seq_lens[s], window) for s in dec_seqs]
        L = max(lens_cpu)
        ar = torch.arange(L, device=device)[None, :]  # [1, L]
        valid = ar < (hi - lo)[:, None]  # [Sd, L]
        pos = torch.where(valid, lo[:, None] + ar, lo[:, None])  # pad with a visible position
        blocks = tables[torch.tensor(dec_seqs, device=device)].gather(1, pos // block_size)
        plan.decode_slots = blocks * block_size + pos % block_size  # [Sd, L]
        _check_assigned(plan.decode_slots)
        plan.decode_rows = torch.tensor(dec_rows, device=device)
        if min(lens_cpu) != L:
            plan.decode_mask = valid[:, None, None, :]
    return plan


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
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttentionPlan, scale: float = 1.0
) -> torch.Tensor:
    """q [T, Hq, D] -> [T, Hq, D]; softmax in fp32 inside SDPA; GQA head h uses KV head h // (Hq/Hkv)."""
    hkv, d = k_cache.shape[-2:]
    hq = q.shape[1]
    group = hq // hkv
    kc = k_cache.view(-1, hkv, d)
    vc = v_cache.view(-1, hkv, d)
    out = torch.empty_like(q)
    if plan.decode_rows is not None:
        sd = plan.decode_rows.shape[0]
        k = kc[plan.decode_slots].to(q.dtype).transpose(1, 2)  # [Sd, Hkv, L, D]
        v = vc[plan.decode_slots].to(q.dtype).transpose(1, 2)  # [Sd, Hkv, L, D]
        # One query per sequence: a KV head's `group` query heads become its query rows, so no KV
        # head is ever repeated.
        qd = q[plan.decode_rows].view(sd, hkv, group, d)  # [Sd, Hkv, G, D]
        o = F.scaled_dot_product_attention(qd, k, v, attn_mask=plan.decode_mask, scale=scale)
        out[plan.decode_rows] = o.reshape(sd, hq, d)
    for p in plan.prefills:
        k = kc[p.slots].to(q.dtype).transpose(0, 1)[None]  # [1, Hkv, L, D]
        v = vc[p.slots].to(q.dtype).transpose(0, 1)[None]
        qp = q[p.row_start : p.row_end].transpose(0, 1)[None]  # [1, Hq, Q, D]
        o = F.scaled_dot_product_attention(
            qp, k, v, attn_mask=p.mask, is_causal=p.mask is None, scale=scale, enable_gqa=group > 1
        )  # [1, Hq, Q, D]
        out[p.row_start : p.row_end] = o[0].transpose(0, 1)
    return out
