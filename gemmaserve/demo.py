"""Writes random-weight Gemma 4 checkpoints with the real multimodal layout (the demo / bench models)."""

from __future__ import annotations

import json
import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file

from gemmaserve.demo_tokenizer import MEDIA_TOKENS, build_demo_tokenizer
from gemmaserve.model.config import FULL, SLIDING, Gemma4TextConfig
from gemmaserve.tokenizer import SUPPRESSED_TOKENS

TEXT_PREFIX = "model.language_model."
SIZES = ("tiny", "small", "bench", "26b-a4b")
# Shards above this size are split (the bench model is ~1.4 GB in bf16).
DEFAULT_SHARD_BYTES = 512 * 1024 * 1024


def _layer_types(n_layers: int, full_at: tuple[int, ...]) -> list[str]:
    return [FULL if i in full_at else SLIDING for i in range(n_layers)]


def _text(**kw: Any) -> dict[str, Any]:
    """A text_config dict with every key transformers' Gemma4TextConfig needs for a 26B-style model."""
    n = kw["num_hidden_layers"]
    full_at = tuple(kw.pop("full_at"))
    base: dict[str, Any] = {
        "model_type": "gemma4_text",
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attention_k_eq_v": True,
        "enable_moe_block": True,
        "hidden_size_per_layer_input": 0,
        "num_kv_shared_layers": 0,
        "use_double_wide_mlp": False,
        "use_bidirectional_attention": "vision",
        "rope_parameters": {
            SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
            FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": "bfloat16",
        "max_position_embeddings": 8192,
    }
    base.update(kw)
    base["vocab_size_per_layer_input"] = base["vocab_size"]
    base["layer_types"] = _layer_types(n, full_at)
    return base


TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": _text(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        global_head_dim=64, num_global_key_value_heads=1, sliding_window=16,
        num_experts=8, top_k_experts=2, moe_intermediate_size=32, full_at=(5,),
    ),
    "small": _text(
        vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        global_head_dim=128, num_global_key_value_heads=1, sliding_window=128,
        num_experts=16, top_k_experts=4, moe_intermediate_size=128, full_at=(5,),
    ),
    # 707M total / 178M active, the CPU benchmark shape of specs/environment.md.
    "bench": _text(
        vocab_size=32768, hidden_size=1024, intermediate_size=896, num_hidden_layers=12,
        num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        global_head_dim=256, num_global_key_value_heads=1, sliding_window=512,
        num_experts=32, top_k_experts=4, moe_intermediate_size=512, full_at=(5, 11),
    ),
    # The real google/gemma-4-26B-A4B-it text_config (spec §2.2); served with --dummy-weights.
    "26b-a4b": _text(
        vocab_size=262144, hidden_size=2816, intermediate_size=2112, num_hidden_layers=30,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256,
        global_head_dim=512, num_global_key_value_heads=2, sliding_window=1024,
        num_experts=128, top_k_experts=8, moe_intermediate_size=704,
        max_position_embeddings=262144, full_at=(5, 11, 17, 23, 29),
    ),
}

SMALL_VISION = {
    "model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
    "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "patch_size": 16,
    "pooling_kernel_size": 3, "position_embedding_size": 1024, "default_output_length": 280,
    "rope_parameters": {"rope_theta": 100.0, "rope_type": "default"}, "standardize": True,
    "use_clipped_linears": False, "attention_bias": False, "attention_dropout": 0.0,
}
REAL_VISION = {
    **SMALL_VISION, "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 72, "position_embedding_size": 10240,
}


def demo_config(size: str) -> dict[str, Any]:
    """The whole config.json (multimodal layout) for one demo size."""
    if size not in TEXT_CONFIGS:
        raise ValueError(f"unknown demo size {size!r}; choose from {', '.join(SIZES)}")
    text = dict(TEXT_CONFIGS[size])
    v = text["vocab_size"]
    media = {t: i for i, t in _media_token_ids(v).items()}
    return {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "dtype": "bfloat16",
        "audio_config": None,
        "boi_token_id": media["<|image>"],
        "eoi_token_id": media["<image|>"],
        "image_token_id": media["<|image|>"],
        "video_token_id": media["<|video|>"],
        "audio_token_id": media["<|audio|>"],
        "boa_token_id": media["<|audio>"],
        "eoa_token_id": media["<audio|>"],
        "eoa_token_index": media["<audio|>"],
        "eos_token_id": [1, 106],
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "vision_soft_tokens_per_image": 280,
        "text_config": text,
        "vision_config": dict(REAL_VISION if size == "26b-a4b" else SMALL_VISION),
    }


def _media_token_ids(vocab_size: int) -> dict[str, int]:
    if max(MEDIA_TOKENS) < vocab_size:
        return {i: t for i, t in MEDIA_TOKENS.items()}  # type: ignore[return-value]
    top = vocab_size - len(MEDIA_TOKENS)
    return {top + n: t for n, t in enumerate(MEDIA_TOKENS.values())}  # type: ignore[return-value]


# -- tensor names and shapes --------------------------------------------------------------------
def text_tensor_shapes(cfg: Gemma4TextConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint text tensors (names without the `model.language_model.` prefix) and shapes."""
    h, out = cfg.hidden_size, {}
    out["embed_tokens.weight"] = (cfg.vocab_size, h)
    out["norm.weight"] = (h,)
    for i in range(cfg.num_hidden_layers):
        p, d, kv = f"layers.{i}.", cfg.layer_head_dim(i), cfg.layer_kv_heads(i)
        out[p + "layer_scalar"] = (1,)
        out[p + "self_attn.q_proj.weight"] = (cfg.num_attention_heads * d, h)
        out[p + "self_attn.k_proj.weight"] = (kv * d, h)
        if cfg.layer_has_v_proj(i):
            out[p + "self_attn.v_proj.weight"] = (kv * d, h)
        out[p + "self_attn.o_proj.weight"] = (h, cfg.num_attention_heads * d)
        out[p + "self_attn.q_norm.weight"] = (d,)
        out[p + "self_attn.k_norm.weight"] = (d,)
        out[p + "mlp.gate_proj.weight"] = (cfg.intermediate_size, h)
        out[p + "mlp.up_proj.weight"] = (cfg.intermediate_size, h)
        out[p + "mlp.down_proj.weight"] = (h, cfg.intermediate_size)
        norms = ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"]
        if cfg.enable_moe_block:
            norms += ["pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2"]
            e, mi = cfg.num_experts, cfg.moe_intermediate_size
            out[p + "router.proj.weight"] = (e, h)
            out[p + "router.scale"] = (h,)
            out[p + "router.per_expert_scale"] = (e,)
            out[p + "experts.gate_up_proj"] = (e, 2 * mi, h)
            out[p + "experts.down_proj"] = (e, h, mi)
        for n in norms:
            out[p + n + ".weight"] = (h,)
    return out


def vision_tensor_shapes(vision: dict[str, Any], text_hidden: int) -> dict[str, tuple[int, ...]]:
    """Vision tower and projector tensors (full names) of a gemma4_vision config."""
    h, mi, hd = vision["hidden_size"], vision["intermediate_size"], vision["head_dim"]
    nq, nkv = vision["num_attention_heads"], vision["num_key_value_heads"]
    vt = "model.vision_tower."
    out = {
        vt + "patch_embedder.input_proj.weight": (h, 3 * vision["patch_size"] ** 2),
        vt + "patch_embedder.position_embedding_table": (2, vision["position_embedding_size"], h),
    }
    for j in range(vision["num_hidden_layers"]):
        p = f"{vt}encoder.layers.{j}."
        out[p + "self_attn.q_proj.linear.weight"] = (nq * hd, h)
        out[p + "self_attn.k_proj.linear.weight"] = (nkv * hd, h)
        out[p + "self_attn.v_proj.linear.weight"] = (nkv * hd, h)
        out[p + "self_attn.o_proj.linear.weight"] = (h, nq * hd)
        out[p + "self_attn.q_norm.weight"] = (hd,)
        out[p + "self_attn.k_norm.weight"] = (hd,)
        out[p + "mlp.gate_proj.linear.weight"] = (mi, h)
        out[p + "mlp.up_proj.linear.weight"] = (mi, h)
        out[p + "mlp.down_proj.linear.weight"] = (h, mi)
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            out[p + n + ".weight"] = (h,)
    if vision.get("standardize"):
        out[vt + "std_bias"] = (h,)
        out[vt + "std_scale"] = (h,)
    out["model.embed_vision.embedding_projection.weight"] = (text_hidden, h)
    return out


def count_params(cfg: Gemma4TextConfig) -> tuple[int, int]:
    """(total, active-per-token) text parameters; active counts top_k of num_experts experts."""
    total = active = 0
    for name, shape in text_tensor_shapes(cfg).items():
        n = math.prod(shape)
        total += n
        active += n * cfg.top_k_experts // cfg.num_experts if ".experts." in name else n
    return total, active


# -- random values ------------------------------------------------------------------------------
def random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A float32 random value for one tensor. Scales keep activations near unit size so that
    routing, attention and logits are not degenerate (no near-ties, no single-token loops)."""
    if name.endswith("layer_scalar"):
        return 0.5 + 0.5 * torch.rand(shape, generator=gen)
    if name.endswith(("q_norm.weight", "k_norm.weight")) and not name.startswith("model."):
        # Attention runs with scale 1.0: q/k norm weights of d^-1/4 give scores of std ~1, as a
        # trained model's would be; weights ~1 give std sqrt(d) and a brittle, near-argmax softmax.
        return (1.0 + 0.1 * torch.randn(shape, generator=gen)) * shape[-1] ** -0.25
    if name.endswith("router.proj.weight"):
        # The router input is RMS-normed and scaled by H^-1/2: std 2 gives router logits of std
        # ~2, so top-k choices are clear instead of near-ties that flip on rounding.
        return 2.0 * torch.randn(shape, generator=gen)
    if name.endswith("norm.weight") or name.endswith(("router.scale", "per_expert_scale", "std_scale")):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("std_bias"):
        return 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("embed_tokens.weight"):
        # logits = norm(h) @ E^T: an std of 2/sqrt(H) gives logits of std ~2 at every size.
        return torch.randn(shape, generator=gen) * (2.0 / math.sqrt(shape[-1]))
    if name.endswith("position_embedding_table"):
        return 0.02 * torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])  # fan-in scaling


# -- writing ------------------------------------------------------------------------------------
def write_demo_model(
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    write_weights: bool = True,
    shard_bytes: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a random-weight checkpoint directory; returns its path. `shard_bytes` forces
    sharding (with model.safetensors.index.json) at that shard size; 26b-a4b never writes
    weights (serve it with --dummy-weights)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config(size)
    tcfg = Gemma4TextConfig.from_dict(config)
    _write_json(out / "config.json", config)
    tok = build_demo_tokenizer(tcfg.vocab_size)
    # The demo vocabulary holds the media markers at other ids: resolve the suppressed set by
    # text, so transformers' generate (a test reference) masks exactly what our sampler masks.
    suppress = sorted(i for i in (tok.token_to_id(t) for t in SUPPRESSED_TOKENS) if i is not None)
    _write_json(out / "generation_config.json", {
        "bos_token_id": 2, "pad_token_id": 0, "eos_token_id": [1, 106, 50],
        "do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 64, "suppress_tokens": suppress,
    })
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", _tokenizer_config())
    _write_json(out / "processor_config.json", PROCESSOR_CONFIG)
    template = resources.files("gemmaserve") / "templates" / "chat_template.jinja"
    if not template.is_file():
        raise FileNotFoundError(f"chat template missing from the package: {template}")
    with resources.as_file(template) as src:
        shutil.copyfile(src, out / "chat_template.jinja")
    if write_weights and size != "26b-a4b":
        _write_weights(out, config, tcfg, seed, dtype, shard_bytes)
    return out


def iter_demo_tensors(
    config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> Iterator[tuple[str, torch.Tensor]]:
    """(full checkpoint name, tensor) pairs in a fixed order, generated one at a time."""
    tcfg = Gemma4TextConfig.from_dict(config)
    gen = torch.Generator().manual_seed(seed)
    for name, shape in text_tensor_shapes(tcfg).items():
        yield TEXT_PREFIX + name, random_tensor(name, shape, gen).to(dtype)
    for name, shape in vision_tensor_shapes(config["vision_config"], tcfg.hidden_size).items():
        yield name, random_tensor(name, shape, gen).to(dtype)


def _write_weights(
    out: Path, config: dict[str, Any], tcfg: Gemma4TextConfig, seed: int, dtype: torch.dtype,
    shard_bytes: int | None,
) -> None:
    limit = shard_bytes or DEFAULT_SHARD_BYTES
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    # Group tensors into shards in order; a shard holds at least one tensor.
    for name, t in iter_demo_tensors(config, seed, dtype):
        nbytes = t.numel() * t.element_size()
        if shards[-1] and sizes[-1] + nbytes > limit:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = t
        sizes[-1] += nbytes
    for stale in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        stale.unlink()
    meta = {"format": "pt"}
    if len(shards) == 1 and shard_bytes is None:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
        return
    n = len(shards)
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update({name: fname for name in shard})
        shard.clear()
    _write_json(out / "model.safetensors.index.json", {
        "metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items())),
    })


# The real checkpoint's processor settings (spec 8.1, 8.4): 280 soft tokens per image, 32 video
# frames of 70; gemmaserve.media implements them (the budgets are its defaults too).
PROCESSOR_CONFIG: dict[str, Any] = {
    "processor_class": "Gemma4Processor",
    "image_seq_length": 280,
    "image_processor": {
        "image_processor_type": "Gemma4ImageProcessor", "do_convert_rgb": True, "do_normalize": False,
        "do_rescale": True, "do_resize": True, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
        "max_soft_tokens": 280, "patch_size": 16, "pooling_kernel_size": 3, "resample": 3,
        "rescale_factor": 1 / 255,
    },
    "video_processor": {
        "video_processor_type": "Gemma4VideoProcessor", "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "do_sample_frames": True, "image_mean": [0.0, 0.0, 0.0],
        "image_std": [1.0, 1.0, 1.0], "max_soft_tokens": 70, "num_frames": 32, "patch_size": 16,
        "pooling_kernel_size": 3, "resample": 3, "rescale_factor": 1 / 255,
    },
}


def _tokenizer_config() -> dict[str, Any]:
    named = {
        "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
        "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
        "video_token": "<|video|>",
        "sot_token": "<|turn>", "eot_token": "<turn|>", "soc_token": "<|channel>", "eoc_token": "<channel|>",
        "std_token": "<|tool>", "etd_token": "<tool|>", "stc_token": "<|tool_call>", "etc_token": "<tool_call|>",
        "str_token": "<|tool_response>", "etr_token": "<tool_response|>",
        "escape_token": '<|"|>', "think_token": "<|think|>",
    }
    return {
        "tokenizer_class": "GemmaTokenizer",
        "backend": "tokenizers",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>",
        "add_bos_token": True, "add_eos_token": False,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "extra_special_tokens": named,
    }


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def describe(size: str) -> str:
    """One line with a size's parameter counts (printed by make-demo-model)."""
    total, active = count_params(Gemma4TextConfig.from_dict(demo_config(size)))
    return f"{size}: {total / 1e6:.1f}M text parameters, {active / 1e6:.1f}M active per token"
