"""Gemma 4 self-attention layer (sliding or full kind) over the paged KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemmaserve.model.batch import StepMode
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.layers import KernelUser, Linear, RMSNorm, fuse_linears
from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.attention import AttentionPlan, paged_attention, store_kv
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.norm import rms_norm
from gemmaserve.ops.paged_decode import DecodePlan, paged_decode
from gemmaserve.ops.rope import apply_rope_signed


class Gemma4Attention(KernelUser, nn.Module):
    """q/k RMSNorm with weight, v RMSNorm without, RoPE on q and k, scale 1.0. On full layers with
    attention_k_eq_v there is no v_proj: V is the weightless-normed raw k_proj output (no RoPE)."""

    batch_invariant = False  # set by Gemma4ForCausalLM.batch_invariant_: the per-row qkv kernel at any T

    def __init__(self, config: Gemma4TextConfig, layer: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.layer_kv_heads(layer)
        self.head_dim = config.layer_head_dim(layer)
        self.eps = config.rms_norm_eps
        self.q_proj = Linear(h, self.num_heads * self.head_dim, dtype, device)
        self.k_proj = Linear(h, self.num_kv_heads * self.head_dim, dtype, device)
        kv_width = self.num_kv_heads * self.head_dim
        self.v_proj = Linear(h, kv_width, dtype, device) if config.layer_has_v_proj(layer) else None
        self.has_v = self.v_proj is not None
        self.o_proj = Linear(self.num_heads * self.head_dim, h, dtype, device)
        self.q_norm = RMSNorm(self.head_dim, self.eps, dtype, device)
        self.k_norm = RMSNorm(self.head_dim, self.eps, dtype, device)
        self.qkv_proj: nn.Module | None = None  # set by fuse_()

    @torch.no_grad()
    def fuse_(self) -> None:
        """q, k (and v) projections become one matmul; state_dict names become qkv_proj.*, so fuse
        only after loading (and before or after the int8 swap: both forms fuse)."""
        if self.qkv_proj is None:
            parts = [self.q_proj, self.k_proj] + ([self.v_proj] if self.v_proj is not None else [])
            self.qkv_proj = fuse_linears(parts)
            del self.q_proj, self.k_proj
            self.v_proj = None
            self.has_v = len(parts) == 3

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        plan: AttentionPlan | DecodePlan,
        slot_mapping: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        mode: StepMode = StepMode.MIXED,
    ) -> torch.Tensor:
        # x [T, H] -> [T, H]. Projections stay module calls (model/quantize.py swaps them for int8
        # modules); norms call the op directly, module dispatch being a visible share of a decode step.
        t, d, eps = x.shape[0], self.head_dim, self.eps
        cos, sin = cos_sin  # [T, 1, D]; sin with rotate-half's sign folded in (ops.rope.signed_sin)
        hq, hkv = self.num_heads * d, self.num_kv_heads * d
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(x)  # [T, Hq*D + Hkv*D (+ Hkv*D)]
            p = self.kernel_policy or KernelPolicy.default()
            if self._qkv_kernel_ok(p, qkv, kv_cache, slot_mapping, cos_sin):
                q = cpu_kernels.qkv_post(p.lib, qkv, self.num_heads, self.num_kv_heads, d, self.has_v,
                                         self.q_norm.weight, self.k_norm.weight, eps, cos, sin, slot_mapping,
                                         kv_cache[0], kv_cache[1])
                o = self._attend(q, kv_cache, plan, mode)  # [T, Hq, D]
                return self.o_proj(o.reshape(t, self.num_heads * d))
            q, k_raw = qkv[:, :hq], qkv[:, hq : hq + hkv]
            v_raw = qkv[:, hq + hkv :] if self.has_v else None
        else:
            q, k_raw = self.q_proj(x), self.k_proj(x)
            v_raw = self.v_proj(x) if self.has_v else None
        q = rms_norm(q.reshape(t, self.num_heads, d), self.q_norm.weight, eps, self.kernel_policy)  # [T, Hq, D]
        q = apply_rope_signed(q, cos, sin)
        k_raw = k_raw.reshape(t, self.num_kv_heads, d)  # [T, Hkv, D]
        if v_raw is None:
            # K=V: v is the weightless norm of k_proj's output and k that same norm times k_norm's
            # weight (both in fp32, as two separate RMSNorms would compute it).
            normed = F.rms_norm(k_raw.float(), (d,), None, eps)  # [T, Hkv, D] fp32
            v = normed.to(x.dtype)
            k = (normed * self.k_norm.weight.float()).to(x.dtype)
        else:
            v = rms_norm(v_raw.reshape(t, self.num_kv_heads, d), None, eps, self.kernel_policy)
            k = rms_norm(k_raw, self.k_norm.weight, eps, self.kernel_policy)
        k = apply_rope_signed(k, cos, sin)
        store_kv(kv_cache[0], kv_cache[1], k, v, slot_mapping)
        o = self._attend(q, kv_cache, plan, mode)  # [T, Hq, D]
        return self.o_proj(o.reshape(t, self.num_heads * d))

    def _qkv_kernel_ok(self, p: KernelPolicy, qkv: torch.Tensor, kv_cache, slot_mapping: torch.Tensor, cos_sin) -> bool:
        """Whether qkv_post may run: at most p.qkv_max_rows rows, bf16 CPU rows, bf16 contiguous caches,
        norm weights and rope tables, contiguous int64 slots (policy "qkv_post")."""
        return (
            (qkv.shape[0] <= p.qkv_max_rows or self.batch_invariant)
            and p.takes("qkv_post", *kv_cache, *cos_sin, self.q_norm.weight, self.k_norm.weight, strided=(qkv,))
            and p.takes("qkv_post", slot_mapping, dtypes=(torch.int64,))
        )

    def _attend(self, q: torch.Tensor, kv_cache, plan: AttentionPlan | DecodePlan, mode: StepMode) -> torch.Tensor:
        # q [T, Hq, D] -> [T, Hq, D]: a graph step's fixed-shape plan, or the host-built plan.
        if mode is StepMode.GRAPH_DECODE:
            return paged_decode(q, kv_cache[0], kv_cache[1], plan, scale=1.0)
        return paged_attention(q, kv_cache[0], kv_cache[1], plan, scale=1.0, policy=self.kernel_policy)
