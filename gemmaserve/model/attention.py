"""Gemma 4 self-attention layer (sliding or full kind) over the paged KV cache."""

from __future__ import annotations

import torch
from torch import nn

from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.layers import Linear, RMSNorm
from gemmaserve.ops.attention import AttentionPlan, paged_attention, store_kv
from gemmaserve.ops.norm import rms_norm
from gemmaserve.ops.rope import apply_rope


class Gemma4Attention(nn.Module):
    """q/k RMSNorm with weight, v RMSNorm without, RoPE on q and k, scale 1.0. On full layers with
    attention_k_eq_v there is no v_proj: V is the weightless-normed raw k_proj output (no RoPE)."""

    def __init__(self, config: Gemma4TextConfig, layer: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.layer_kv_heads(layer)
        self.head_dim = config.layer_head_dim(layer)
        self.eps = config.rms_norm_eps
        self.q_proj = Linear(h, self.num_heads * self.head_dim, dtype, device)
        self.k_proj = Linear(h, self.num_kv_heads * self.head_dim, dtype, device)
        self.v_proj = Linear(h, self.num_kv_heads * self.head_dim, dtype, device) if config.layer_has_v_proj(layer) else None
        self.o_proj = Linear(self.num_heads * self.head_dim, h, dtype, device)
        self.q_norm = RMSNorm(self.head_dim, self.eps, dtype, device)
        self.k_norm = RMSNorm(self.head_dim, self.eps, dtype, device)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        plan: AttentionPlan,
        slot_mapping: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        # x [T, H] -> [T, H]
        t = x.shape[0]
        cos, sin = cos_sin  # [T, 1, D]
        q = self.q_norm(self.q_proj(x).view(t, self.num_heads, self.head_dim))  # [T, Hq, D]
        q = apply_rope(q, cos, sin)
        k_raw = self.k_proj(x).view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v_raw = k_raw if self.v_proj is None else self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
        k = apply_rope(self.k_norm(k_raw), cos, sin)
        v = rms_norm(v_raw, None, self.eps)
        store_kv(kv_cache[0], kv_cache[1], k, v, slot_mapping)
        o = paged_attention(q, kv_cache[0], kv_cache[1], plan, scale=1.0)  # [T, Hq, D]
        return self.o_proj(o.reshape(t, self.num_heads * self.head_dim))
