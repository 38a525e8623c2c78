"""Decode-only attention over the paged KV cache with shapes fixed by (batch B, key width L): every
address is computed on the device, so a step can be captured in a CUDA graph and replayed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F



@dataclass
class DecodePlan:
    """Where each of B single-token rows reads its keys, for one attention kind, in a GRAPH_DECODE step
    (model.batch.StepMode: the layers read it with paged_decode). Built once per step and kind on the
    device, shared by the kind's layers."""

    slots: torch.Tensor  # [B, L] int64 flat cache slots (masked-out keys repeat an assigned slot)
    mask: torch.Tensor  # [B, 1, 1, L] bool, True = visible; every row has at least one visible key


def build_decode_plan(
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    window: int | None,
    width: int,
    pad_slot: int,
    window_tables: bool = False,
) -> DecodePlan:
    """block_tables [B, nb] int (logical block -> cache block), seq_lens [B] int (tokens in cache
    after this step; 0 marks a padding row). The one query of row b sits at position
    seq_lens[b] - 1 and sees the last min(seq_len, window) keys; the caller picks width >= that for
    every row. No host sync, no data-dependent shape.

    With window_tables (windowed kinds only) row b's table starts at logical block
    window_first_block(seq_len, window, block_size) instead of 0, so it needs only
    cdiv(window, block_size) + 1 columns however long the sequence: less to copy each step.

    Masked-out keys and padding rows read slots that hold finite values (the newest key of the row,
    or pad_slot, where padding rows write their own K/V this step), so NaN or stale memory in
    released (-1) or unassigned blocks never reaches the softmax: 0 * NaN would still be NaN."""
    device = block_tables.device
    tables = block_tables.long()
    lens = seq_lens.long()
    hi = lens.clamp(min=1)  # [B] one past the newest key; padding rows pretend to hold one key
    n_keys = hi if window is None else hi.clamp(max=window)  # [B]
    ar = torch.arange(width, device=device)[None, :]  # [1, L]
    valid = ar < n_keys[:, None]  # [B, L]
    newest = (hi - 1)[:, None]  # [B, 1] always in an assigned block (written this step)
    pos = torch.where(valid, newest - n_keys[:, None] + 1 + ar, newest)  # [B, L] oldest visible first
    col = pos // block_size  # [B, L] logical block
    if window_tables:
        col = col - ((hi - n_keys) // block_size)[:, None]  # the table starts at the oldest key's block
    blocks = tables.gather(1, col)  # [B, L]
    slots = blocks * block_size + pos % block_size  # [B, L]
    # A -1 block can only show up here through an upstream bug; index_select with a negative index
    # would fault the device (and a check would need a host sync), so it reads the scratch slot.
    real = (lens[:, None] > 0) & (blocks >= 0)  # [B, L]
    slots = torch.where(real, slots, torch.full_like(slots, pad_slot))
    return DecodePlan(slots=slots, mask=valid[:, None, None, :])


def window_first_block(seq_len: int, window: int, block_size: int) -> int:
    """Host twin of build_decode_plan's window_tables offset: the logical block of the oldest key
    the newest query of a seq_len-token sequence sees (padding rows, seq_len 0, start at 0)."""
    return max(0, max(seq_len, 1) - window) // block_size


def paged_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: DecodePlan, scale: float = 1.0
) -> torch.Tensor:
    """q [B, Hq, D] (one query per row) -> [B, Hq, D]; caches [num_blocks, block_size, Hkv, D].
    GQA without repeating KV heads: the G = Hq / Hkv query heads of a KV head become its G query
    rows. Same arithmetic as ops.attention's decode groups (fp32 softmax inside SDPA)."""
    b, hq, d = q.shape
    hkv = k_cache.shape[-2]
    group = hq // hkv
    flat = plan.slots.reshape(-1)  # [B*L]
    k = k_cache.view(-1, hkv, d).index_select(0, flat).view(b, -1, hkv, d).to(q.dtype).transpose(1, 2)  # [B, Hkv, L, D]
    v = v_cache.view(-1, hkv, d).index_select(0, flat).view(b, -1, hkv, d).to(q.dtype).transpose(1, 2)  # [B, Hkv, L, D]
    qd = q.view(b, hkv, group, d)  # [B, Hkv, G, D]
    o = F.scaled_dot_product_attention(qd, k, v, attn_mask=plan.mask, scale=scale)  # [B, Hkv, G, D]
    return o.reshape(b, hq, d)
