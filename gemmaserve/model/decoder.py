"""Gemma 4 text decoder (MoE 26B-A4B and dense layouts) over paged KV caches: ids -> soft-capped logits."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gemmaserve.model.attention import Gemma4Attention
from gemmaserve.model.batch import ForwardBatch, KVCaches, StepMode
from gemmaserve.model.config import FULL, SLIDING, Gemma4TextConfig
from gemmaserve.model.fast_decode import decode_layer
from gemmaserve.model.layers import GeGLUMLP, KernelUser, RMSNorm, empty_param, use_kernel_policy
from gemmaserve.model.moe import Gemma4Experts, Gemma4Router
from gemmaserve.ops import batch_invariant
from gemmaserve.ops.attention import AttentionPlan, build_plan, build_row_plan
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.linear import linear
from gemmaserve.ops.norm import rms_norm
from gemmaserve.ops.paged_decode import DecodePlan
from gemmaserve.ops.rope import default_inv_freq, proportional_inv_freq, rope_cos_sin, signed_sin


class Gemma4DecoderLayer(KernelUser, nn.Module):
    """Attention block, dense GeGLU MLP, optional MoE beside it, seven norms, layer_scalar."""

    batch_invariant = False  # set by Gemma4ForCausalLM.batch_invariant_: no one-call decode layer

    def __init__(self, config: Gemma4TextConfig, layer: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.eps = eps
        self.kind = config.layer_types[layer]
        self.self_attn = Gemma4Attention(config, layer, dtype, device)
        self.mlp = GeGLUMLP(h, config.intermediate_size, dtype, device)
        self.input_layernorm = RMSNorm(h, eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(h, eps, dtype, device)
        self.pre_feedforward_layernorm = RMSNorm(h, eps, dtype, device)
        self.post_feedforward_layernorm = RMSNorm(h, eps, dtype, device)
        self.enable_moe = config.enable_moe_block
        if self.enable_moe:
            self.router = Gemma4Router(config, dtype, device)
            self.experts = Gemma4Experts(config, dtype, device)
            self.post_feedforward_layernorm_1 = RMSNorm(h, eps, dtype, device)
            self.pre_feedforward_layernorm_2 = RMSNorm(h, eps, dtype, device)
            self.post_feedforward_layernorm_2 = RMSNorm(h, eps, dtype, device)
        # A persistent buffer in the checkpoint (shape [1]), like transformers.
        self.register_buffer("layer_scalar", torch.empty(1, dtype=dtype, device=device))

    def forward(
        self,
        h: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        plan: AttentionPlan | DecodePlan,
        slot_mapping: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        keep_rows: torch.Tensor | None = None,
        mode: StepMode = StepMode.MIXED,
    ) -> torch.Tensor:
        """h [T, H] -> [T, H], or [len(keep_rows), H] when keep_rows is given: every row's K/V is
        still written, but the feed-forward runs only on the kept rows (last layer: sampled rows).
        `mode` (the batch's StepMode) picks the attention plan's reader and the MoE form."""
        p = self.kernel_policy or KernelPolicy.default()
        if mode is StepMode.DECODE and not self.batch_invariant:
            fast = decode_layer(self, h, cos_sin, plan, slot_mapping, kv_cache, keep_rows, p)
            if fast is not None:  # the whole layer in one CPU kernel call (model/fast_decode.py)
                return fast
        eps = self.eps
        a = self.self_attn(rms_norm(h, self.input_layernorm.weight, eps, p), cos_sin, plan, slot_mapping, kv_cache, mode)
        r = h + rms_norm(a, self.post_attention_layernorm.weight, eps, p)  # [T, H]
        if keep_rows is not None:
            r = r[keep_rows]
            if r.shape[0] == 0:  # a step where no row samples (a prompt chunk that is not its last)
                return r
        d = self.mlp(rms_norm(r, self.pre_feedforward_layernorm.weight, eps, p))  # [T, H] dense GeGLU
        if self.enable_moe:
            d = rms_norm(d, self.post_feedforward_layernorm_1.weight, eps, p)
            w, idx = self.router(r)  # the router sees the post-attention residual
            xm = rms_norm(r, self.pre_feedforward_layernorm_2.weight, eps, p)
            m = self.experts(xm, idx, w, mode)  # the experts module picks its path for the mode
            d = d + rms_norm(m, self.post_feedforward_layernorm_2.weight, eps, p)
        return (r + rms_norm(d, self.post_feedforward_layernorm.weight, eps, p)) * self.layer_scalar


class Gemma4ForCausalLM(KernelUser, nn.Module):
    """The text decoder. state_dict keys are the checkpoint's text tensor names without the
    `model.language_model.` prefix; RoPE tables and the embedding scale are non-persistent buffers.
    The LM head is tied to embed_tokens."""

    def __init__(self, config: Gemma4TextConfig, dtype: torch.dtype = torch.bfloat16, device="cpu") -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        h = config.hidden_size
        self.embed_tokens = nn.Module()
        self.embed_tokens.weight = empty_param(config.vocab_size, h, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            Gemma4DecoderLayer(config, i, dtype, device) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(h, config.rms_norm_eps, dtype, device)
        # Weight-only int8 (model/quantize.py) sets an int8 copy of embed_tokens for the tied LM head.
        self.lm_head_int8: nn.Module | None = None
        # Kept in fp32 and cast to the weight dtype at use: sqrt(2816) = 53.07 becomes 53.0 in bf16.
        self.register_buffer("embed_scale", torch.tensor(h**0.5, device=device), persistent=False)
        inv = {
            SLIDING: default_inv_freq(config.head_dim, config.rope_local_theta),
            FULL: proportional_inv_freq(
                config.global_head_dim, config.rope_global_theta, config.global_partial_rotary_factor
            ),
        }
        for kind, freq in inv.items():
            self.register_buffer(f"{kind}_inv_freq", freq.to(device), persistent=False)
        # Batch-invariant (deterministic) mode: see batch_invariant_(); per-kind RoPE tables then.
        self.batch_invariant = False
        self._rope_tables: dict[str, batch_invariant.RopeTable] = {}

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @torch.no_grad()
    def init_random_(self, seed: int = 0, std: float = 0.02) -> "Gemma4ForCausalLM":
        """Plausible random weights for --dummy-weights: matrices N(0, std), norm weights and router
        scales ~1, per_expert_scale ~1, layer_scalar 1. Deterministic for a seed and device."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() == 1 and (leaf in ("weight", "scale", "per_expert_scale")):
                p.normal_(1.0, 0.05, generator=gen)
            else:
                p.normal_(0.0, std, generator=gen)
        for layer in self.layers:
            layer.layer_scalar.fill_(1.0)
        return self

    def use_kernel_policy(self, policy: KernelPolicy) -> "Gemma4ForCausalLM":
        """Every module's ops choose kernels by `policy` from now on (call after fuse_ and int8 swaps)."""
        return use_kernel_policy(self, policy)

    @torch.no_grad()
    def fuse_(self) -> "Gemma4ForCausalLM":
        """After loading (and after any int8 swap): attention q/k/v and dense-MLP gate/up become one
        matmul each, 2 fewer weight reads and dispatches per layer and decode step. Renames those
        state_dict entries (qkv_proj, gate_up_proj), so checkpoints load into the unfused model."""
        for layer in self.layers:
            layer.self_attn.fuse_()
            layer.mlp.fuse_()
        return self

    def batch_invariant_(self) -> "Gemma4ForCausalLM":
        """Deterministic mode: every row's logits become a function of that request's tokens alone,
        whatever shares its batch, however its prompt was chunked, whether its prefix came from the
        cache (ops/batch_invariant.py). Call after fuse_ (fused projections are new modules). Costs
        prefill speed: every matmul is a GEMV pass of 8 (32 with AMX) rows. Weight-only int8 layers
        have no invariant path, so they are refused."""
        if self.lm_head_int8 is not None or any(hasattr(m, "qweight") or hasattr(m, "gate_up_q") for m in self.modules()):
            raise ValueError("deterministic mode needs bf16/fp16/fp32 weights, not int8")
        for m in self.modules():
            if hasattr(type(m), "batch_invariant"):
                m.batch_invariant = True
        self.batch_invariant = True
        dtype = self.embed_tokens.weight.dtype
        for spec in self.config.attention_kinds():
            freq = getattr(self, f"{spec.kind}_inv_freq")
            self._rope_tables[spec.kind] = batch_invariant.RopeTable(partial(_rope_signed, inv_freq=freq, dtype=dtype))
        return self

    def allocate_kv_caches(
        self, num_blocks: dict[str, int], block_size: int, dtype: torch.dtype | None = None, device=None
    ) -> KVCaches:
        return allocate_kv_caches(self.config, num_blocks, block_size, dtype or self.dtype, device or self.device)

    def forward(self, batch: ForwardBatch, kv_caches: KVCaches) -> torch.Tensor:
        """Writes the batch's K/V at each kind's slot_mapping; returns fp32 soft-capped logits
        [num_sample, vocab] for rows batch.logits_indices."""
        cfg = self.config
        w = self.embed_tokens.weight
        h = F.embedding(batch.input_ids, w) * self.embed_scale.to(w.dtype)  # [T, H]
        if batch.mm_rows is not None:  # media soft tokens take their vision embeddings (unscaled)
            h = h.index_copy(0, batch.mm_rows, batch.mm_embeds.to(h.dtype))
        # A graph runner's decode step brings device-built plans (engine.cuda_graph); others are built here.
        plans: dict = dict(batch.decode_plans or {})
        rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for spec in cfg.attention_kinds():
            meta = batch.kinds[spec.kind]
            if spec.kind not in plans:
                # The vision overlay is for sliding layers only; full layers stay causal (spec 4.3).
                blocks = batch.mm_blocks if spec.kind == SLIDING else None
                plan_fn = build_row_plan if self.batch_invariant else build_plan
                plans[spec.kind] = plan_fn(
                    meta.block_tables, batch.query_lens_cpu, batch.seq_lens_cpu, batch.block_size, spec.window, blocks
                )
            if self.batch_invariant:
                rope[spec.kind] = self._rope_tables[spec.kind](batch.positions)
                continue
            cos, sin = rope_cos_sin(batch.positions, getattr(self, f"{spec.kind}_inv_freq"), w.dtype)
            rope[spec.kind] = (cos, signed_sin(sin))  # [T, 1, D] each, shared by the kind's layers
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            kind = layer.kind
            keep = batch.logits_indices if i == last else None
            h = layer(h, rope[kind], plans[kind], batch.kinds[kind].slot_mapping, kv_caches[i], keep, batch.mode)
        h = rms_norm(h, self.norm.weight, cfg.rms_norm_eps, self.kernel_policy)
        head = self.lm_head_int8
        if self.batch_invariant:
            logits = batch_invariant.linear(h, w, self.kernel_policy).float()  # [num_sample, vocab]
            cap = cfg.final_logit_softcapping
            return batch_invariant.softcap(logits, cap) if cap else logits
        logits = (linear(h, w, self.kernel_policy) if head is None else head(h, w)).float()  # [num_sample, vocab], tied LM head
        cap = cfg.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


def _rope_signed(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) [N, 1, D] for positions [N]: what forward builds per step, as a table row source."""
    cos, sin = rope_cos_sin(positions, inv_freq, dtype)
    return cos, signed_sin(sin)


def allocate_kv_caches(
    config: Gemma4TextConfig, num_blocks: dict[str, int], block_size: int, dtype: torch.dtype, device
) -> KVCaches:
    """Per layer (k, v), each [num_blocks[kind], block_size, kv_heads_of_kind, head_dim_of_kind].
    Zero-filled so that no stale NaN can ever reach a matmul."""
    caches: KVCaches = []
    for i, kind in enumerate(config.layer_types):
        shape = (num_blocks[kind], block_size, config.layer_kv_heads(i), config.layer_head_dim(i))
        caches.append(
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        )
    return caches
