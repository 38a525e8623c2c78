"""Gemma 4 text-decoder configuration, parsed from a checkpoint's config.json (both layouts)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class AttentionKindSpec:
    """Geometry of one attention kind; every layer of a kind shares one KV block pool."""

    kind: str  # SLIDING or FULL
    layers: tuple[int, ...]  # decoder layer indices of this kind
    num_kv_heads: int
    head_dim: int
    window: int | None  # sliding window (tokens, including the query itself); None = unbounded


@dataclass(frozen=True)
class Gemma4TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense GeGLU MLP width
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # sliding layers
    head_dim: int  # sliding layers
    global_head_dim: int  # full layers
    num_global_key_value_heads: int  # full layers
    attention_k_eq_v: bool  # full layers have no v_proj; V comes from k_proj
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_local_theta: float = 10_000.0
    rope_global_theta: float = 1_000_000.0
    global_partial_rotary_factor: float = 0.25
    enable_moe_block: bool = False
    num_experts: int = 0
    top_k_experts: int = 0
    moe_intermediate_size: int = 0
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float | None = 30.0
    max_position_embeddings: int = 262_144
    tie_word_embeddings: bool = True
    hidden_activation: str = "gelu_pytorch_tanh"
    bos_token_id: int = 2
    eos_token_ids: tuple[int, ...] = (1, 106)
    pad_token_id: int = 0
    # Settings of the whole checkpoint that the engine needs beside the decoder.
    multimodal: bool = False  # Gemma4ForConditionalGeneration layout (tensors under model.language_model.)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        bad = [t for t in self.layer_types if t not in (SLIDING, FULL)]
        if bad:
            raise ValueError(f"unknown layer type {bad[0]!r}")
        if self.enable_moe_block and not (0 < self.top_k_experts <= self.num_experts):
            raise ValueError("MoE config needs 0 < top_k_experts <= num_experts")

    # -- per-layer geometry -------------------------------------------------------------------
    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def layer_head_dim(self, layer: int) -> int:
        return self.head_dim if self.is_sliding(layer) else self.global_head_dim

    def layer_kv_heads(self, layer: int) -> int:
        return self.num_key_value_heads if self.is_sliding(layer) else self.num_global_key_value_heads

    def layer_has_v_proj(self, layer: int) -> bool:
        return self.is_sliding(layer) or not self.attention_k_eq_v

    def attention_kinds(self) -> list[AttentionKindSpec]:
        """One spec per attention kind present, sliding first."""
        specs = []
        for kind in (SLIDING, FULL):
            layers = tuple(i for i, t in enumerate(self.layer_types) if t == kind)
            if not layers:
                continue
            specs.append(
                AttentionKindSpec(
                    kind=kind,
                    layers=layers,
                    num_kv_heads=self.layer_kv_heads(layers[0]),
                    head_dim=self.layer_head_dim(layers[0]),
                    window=self.sliding_window if kind == SLIDING else None,
                )
            )
        return specs

    def kv_bytes_for_tokens(self, num_tokens: int, dtype_bytes: int = 2) -> int:
        """KV bytes one sequence of `num_tokens` needs when sliding layers keep only their window
        (K and V stored separately, no paging slack)."""
        total = 0
        for spec in self.attention_kinds():
            kept = num_tokens if spec.window is None else min(num_tokens, spec.window)
            total += len(spec.layers) * kept * spec.num_kv_heads * spec.head_dim * 2 * dtype_bytes
        return total

    # -- parsing ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Gemma4TextConfig":
        """Parse a config.json dict: multimodal (text_config inside) or text-only layout; real
        checkpoints carry global_head_dim / num_global_key_value_heads, transformers-saved ones a
        per_layer_config override map. Both are read."""
        multimodal = "text_config" in raw
        tc = dict(raw["text_config"]) if multimodal else dict(raw)
        if tc.get("model_type", "gemma4_text") not in ("gemma4_text", "gemma4"):
            raise ValueError(f"not a Gemma 4 text config: model_type={tc.get('model_type')!r}")
        n_layers = int(tc["num_hidden_layers"])
        layer_types = tuple(tc.get("layer_types") or _default_layer_types(n_layers))
        head_dim = int(tc.get("head_dim", 256))
        n_kv = int(tc.get("num_key_value_heads", 1))
        k_eq_v = bool(tc.get("attention_k_eq_v", False))
        g_head_dim = tc.get("global_head_dim")
        g_kv = tc.get("num_global_key_value_heads")
        per_layer = tc.get("per_layer_config") or {}
        for idx, override in per_layer.items():
            if layer_types[int(idx)] == FULL:
                g_head_dim = g_head_dim or override.get("head_dim")
                g_kv = g_kv or override.get("num_key_value_heads")
        g_head_dim = int(g_head_dim or head_dim)
        # transformers applies the global KV-head override only with K=V.
        g_kv = int(g_kv) if (g_kv and k_eq_v) or (g_kv and per_layer) else n_kv
        rope = tc.get("rope_parameters") or {}
        local = rope.get(SLIDING, {})
        glob = rope.get(FULL, {})
        eos = raw.get("eos_token_id", tc.get("eos_token_id", [1, 106]))
        eos_ids = tuple(eos) if isinstance(eos, list) else (int(eos),)
        known = set(cls.__dataclass_fields__)
        return cls(
            vocab_size=int(tc["vocab_size"]),
            hidden_size=int(tc["hidden_size"]),
            intermediate_size=int(tc["intermediate_size"]),
            num_hidden_layers=n_layers,
            num_attention_heads=int(tc["num_attention_heads"]),
            num_key_value_heads=n_kv,
            head_dim=head_dim,
            global_head_dim=g_head_dim,
            num_global_key_value_heads=g_kv,
            attention_k_eq_v=k_eq_v,
            sliding_window=int(tc.get("sliding_window", 1024)),
            layer_types=layer_types,
            rope_local_theta=float(local.get("rope_theta", 10_000.0)),
            rope_global_theta=float(glob.get("rope_theta", 1_000_000.0)),
            global_partial_rotary_factor=float(glob.get("partial_rotary_factor", 0.25)),
            enable_moe_block=bool(tc.get("enable_moe_block", False)),
            num_experts=int(tc.get("num_experts") or 0),
            top_k_experts=int(tc.get("top_k_experts") or 0),
            moe_intermediate_size=int(tc.get("moe_intermediate_size") or 0),
            rms_norm_eps=float(tc.get("rms_norm_eps", 1e-6)),
            final_logit_softcapping=tc.get("final_logit_softcapping", 30.0),
            max_position_embeddings=int(tc.get("max_position_embeddings", 262_144)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", tc.get("tie_word_embeddings", True))),
            hidden_activation=str(tc.get("hidden_activation", "gelu_pytorch_tanh")),
            bos_token_id=int(tc.get("bos_token_id", 2)),
            eos_token_ids=eos_ids,
            pad_token_id=int(tc.get("pad_token_id", 0)),
            multimodal=multimodal,
            extra={k: v for k, v in tc.items() if k not in known},
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "Gemma4TextConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _default_layer_types(n_layers: int) -> list[str]:
    # 5 sliding : 1 full, and transformers forces the last layer to full attention.
    types = [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(n_layers)]
    types[-1] = FULL
    return types
