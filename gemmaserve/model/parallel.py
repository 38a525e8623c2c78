"""Tensor and expert parallelism over torch.distributed: one rank's shard of a Gemma 4 decoder.

Layout (docs/multi-gpu.md has the plan and the per-token traffic):
- attention: q heads split across ranks (column-parallel q/k/v, row-parallel o_proj), each rank
  caching only its KV heads (a KV head is replicated where there are fewer KV heads than ranks);
- dense GeGLU MLP: gate/up rows and down columns split (column- then row-parallel);
- MoE: experts split into contiguous ranges (expert parallelism); the router stays whole, so every
  rank computes the same routing; each rank runs its own experts on the tokens routed to them;
- one sum all-reduce closes each of the three, so the residual stream is identical on every rank.
Embedding, norms, router and LM head are replicated. Every rank runs the same batches (SPMD).
The single-process model is untouched: a shard is an ordinary Gemma4ForCausalLM of a smaller
config with three of its submodules wrapped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.batch import StepMode
from gemmaserve.model.decoder import Gemma4ForCausalLM
from gemmaserve.model.layers import KernelUser
from gemmaserve.ops.moe import moe_experts


@dataclass(frozen=True)
class ParallelPlan:
    """Which shard this process holds: `rank` of `world` in `group` (None: the default group)."""

    rank: int
    world: int
    group: object | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside world {self.world}")

    def split(self, n: int, what: str) -> tuple[int, int]:
        """[lo, hi) of this rank's equal share of n items."""
        if n % self.world:
            raise ValueError(f"{what} = {n} does not split over {self.world} ranks")
        k = n // self.world
        return self.rank * k, (self.rank + 1) * k

    def kv_heads(self, n_kv: int) -> tuple[int, int]:
        """This rank's KV heads: an equal share, or the one head its q heads read when there are
        fewer KV heads than ranks (each such head then lives on world / n_kv ranks)."""
        if n_kv >= self.world:
            return self.split(n_kv, "KV heads")
        if self.world % n_kv:
            raise ValueError(f"{n_kv} KV heads cannot be shared by {self.world} ranks")
        head = self.rank // (self.world // n_kv)
        return head, head + 1


def shard_config(config: Gemma4TextConfig, plan: ParallelPlan) -> Gemma4TextConfig:
    """The per-rank shapes: a 1/world share of q heads, KV heads and dense-MLP width."""
    lo, hi = plan.split(config.num_attention_heads, "attention heads")
    s_lo, s_hi = plan.kv_heads(config.num_key_value_heads)
    g_lo, g_hi = plan.kv_heads(config.num_global_key_value_heads)
    i_lo, i_hi = plan.split(config.intermediate_size, "intermediate_size")
    return dataclasses.replace(config, num_attention_heads=hi - lo, num_key_value_heads=s_hi - s_lo,
                               num_global_key_value_heads=g_hi - g_lo, intermediate_size=i_hi - i_lo)


class AllReduceSum(nn.Module):
    """Wraps a module whose output is this rank's partial sum; returns the full sum."""

    def __init__(self, inner: nn.Module, plan: ParallelPlan) -> None:
        super().__init__()
        self.inner = inner
        self.group = plan.group

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.inner(*args, **kwargs)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out


class ExpertParallelExperts(KernelUser, nn.Module):
    """This rank's experts [lo, hi) of the fused expert tensors: gate_up_proj [E/W, 2I, H],
    down_proj [E/W, H, I]. Routing pairs to other ranks' experts get weight 0 here (their rank adds
    them in the all-reduce); one [T, H] partial per rank. A production path would send each token
    only to the ranks of its experts (all-to-all dispatch/combine); this one keeps every rank's
    batch identical, which tensor-parallel attention already requires."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi
        self.gate_up_proj = nn.Parameter(gate_up[lo:hi].clone(), requires_grad=False)
        self.down_proj = nn.Parameter(down[lo:hi].clone(), requires_grad=False)

    graph_safe = False  # the all-reduce around it is not captured

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, mode: StepMode = StepMode.MIXED) -> torch.Tensor:
        # x [T, H], idx/w [T, K] over all experts -> [T, H] partial (this rank's experts only)
        local = (idx >= self.lo) & (idx < self.hi)  # [T, K]
        idx_local = torch.where(local, idx - self.lo, torch.zeros_like(idx))
        w_local = torch.where(local, w, torch.zeros_like(w))
        return moe_experts(x, self.gate_up_proj, self.down_proj, idx_local, w_local, self.kernel_policy)


def _rows(t: torch.Tensor, lo: int, hi: int, per: int) -> torch.Tensor:
    return t[lo * per : hi * per].clone()


@torch.no_grad()
def shard_model(full: Gemma4ForCausalLM, plan: ParallelPlan) -> Gemma4ForCausalLM:
    """This rank's shard of an unfused, loaded model (fuse_() the shard afterwards if wanted)."""
    cfg = full.config
    local_cfg = shard_config(cfg, plan)
    shard = Gemma4ForCausalLM(local_cfg, dtype=full.dtype, device=full.device)
    shard.config = local_cfg
    src = dict(full.state_dict())
    i_lo, i_hi = plan.split(cfg.intermediate_size, "intermediate_size")
    e_lo, e_hi = plan.split(cfg.num_experts, "experts")
    out: dict[str, torch.Tensor] = {}
    for name, t in src.items():
        parts = name.split(".")
        if parts[0] != "layers":
            out[name] = t
            continue
        layer = int(parts[1])
        d = cfg.layer_head_dim(layer)
        q_lo, q_hi = plan.split(cfg.num_attention_heads, "attention heads")
        kv_lo, kv_hi = plan.kv_heads(cfg.layer_kv_heads(layer))
        key = ".".join(parts[2:])
        if key == "self_attn.q_proj.weight":  # [Hq*D, H]: this rank's heads
            out[name] = _rows(t, q_lo, q_hi, d)
        elif key in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):  # [Hkv*D, H]
            out[name] = _rows(t, kv_lo, kv_hi, d)
        elif key == "self_attn.o_proj.weight":  # [H, Hq*D]: the columns of this rank's heads
            out[name] = t[:, q_lo * d : q_hi * d].clone()
        elif key in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):  # [I, H]
            out[name] = t[i_lo:i_hi].clone()
        elif key == "mlp.down_proj.weight":  # [H, I]
            out[name] = t[:, i_lo:i_hi].clone()
        elif key.startswith("experts."):
            continue  # below: ExpertParallelExperts holds the slice
        else:
            out[name] = t
    missing, unexpected = shard.load_state_dict(out, strict=False)
    assert not unexpected, unexpected
    assert all(".experts." in m for m in missing), missing
    for i, layer in enumerate(shard.layers):
        layer.self_attn = AllReduceSum(layer.self_attn, plan)
        layer.mlp = AllReduceSum(layer.mlp, plan)
        if layer.enable_moe:
            full_experts = full.layers[i].experts
            layer.experts = AllReduceSum(
                ExpertParallelExperts(full_experts.gate_up_proj, full_experts.down_proj, e_lo, e_hi), plan)
    return shard  # RoPE tables and the embedding scale are rebuilt from the config, as in `full`
