"""Gemma 4 mixture-of-experts block: router (softmax over all experts, top-k, renormalise,
per-expert scale) and fused expert tensors computed only for the chosen experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemmaserve.model.batch import StepMode
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.layers import KernelUser, Linear, empty_param
from gemmaserve.ops import batch_invariant
from gemmaserve.ops.moe import moe_experts, moe_graph
from gemmaserve.ops.norm import rms_norm


class Gemma4Router(KernelUser, nn.Module):
    """State dict: proj.weight [E, H], scale [H], per_expert_scale [E]."""

    batch_invariant = False  # set by Gemma4ForCausalLM.batch_invariant_

    def __init__(self, config: Gemma4TextConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        h, e = config.hidden_size, config.num_experts
        self.top_k = config.top_k_experts
        self.eps = config.rms_norm_eps
        self.root_size = h**-0.5
        self.proj = Linear(h, e, dtype, device)
        self.scale = empty_param(h, dtype=dtype, device=device)
        self.per_expert_scale = empty_param(e, dtype=dtype, device=device)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r [T, H] post-attention residual -> (weights [T, K] fp32, expert ids [T, K] int64)."""
        x = rms_norm(r, None, self.eps, self.kernel_policy) * self.scale * self.root_size  # [T, H]
        probs = F.softmax(self.proj(x), dim=-1, dtype=torch.float32)  # [T, E] over all experts
        w, idx = torch.topk(probs, self.top_k, dim=-1)  # [T, K]
        w = w / (batch_invariant.row_sum(w) if self.batch_invariant else w.sum(dim=-1, keepdim=True))
        return w * self.per_expert_scale[idx], idx


class Gemma4Experts(KernelUser, nn.Module):
    """Fused expert tensors, named like the checkpoint (no `.weight` suffix):
    gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]. Owns its MoE path choice: the
    capture-safe form in graph-decode steps, else the eager choice by token count (ops.moe)."""

    graph_safe = True  # no host sync in its GRAPH_DECODE path (engine.cuda_graph may capture it)

    batch_invariant = False  # set by Gemma4ForCausalLM.batch_invariant_

    def __init__(self, config: Gemma4TextConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = empty_param(e, 2 * i, h, dtype=dtype, device=device)
        self.down_proj = empty_param(e, h, i, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, mode: StepMode = StepMode.MIXED) -> torch.Tensor:
        # x [T, H], idx/w [T, K] -> [T, H]
        if self.batch_invariant:
            return batch_invariant.moe_experts(x, self.gate_up_proj, self.down_proj, idx, w, self.kernel_policy)
        if mode is StepMode.GRAPH_DECODE:
            return moe_graph(x, self.gate_up_proj, self.down_proj, idx, w, self.kernel_policy)
        return moe_experts(x, self.gate_up_proj, self.down_proj, idx, w, self.kernel_policy)
