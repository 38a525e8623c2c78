"""Loads a Gemma 4 checkpoint directory (safetensors, either layout) into Gemma4ForCausalLM."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.ct_checkpoint import compressed_sinks, int4_group_size
from gemmaserve.model.decoder import Gemma4ForCausalLM
from gemmaserve.model.quantize_int4 import Int4Experts, Int4Linear, add_int8_lm_head_, init_random_int4_, to_int4_
from gemmaserve.model.vision import EMBED_PREFIX, VISION_PREFIX, Gemma4VisionConfig, VisionEncoder
from gemmaserve.ops.int4 import GROUP_SIZE

# Tensors of the multimodal checkpoint that the text decoder does not use.
SKIPPED_PREFIXES = ("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.")
MULTIMODAL_TEXT_PREFIX = "model.language_model."
TEXT_ONLY_PREFIX = "model."
QUANTIZATIONS = (None, "int8", "int4")
# How many missing/unexpected names an error message lists before it says "and N more".
_MAX_NAMES = 8


class CheckpointError(ValueError):
    """A checkpoint that does not match its config: missing, unexpected or mis-shaped tensors,
    or no weight files. The message names the tensors."""


def load_model(
    model_dir: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    dummy_weights: bool = False,
    quantization: str | None = None,
    seed: int = 0,
    int4_group: int = GROUP_SIZE,
) -> tuple[Gemma4ForCausalLM, Gemma4TextConfig]:
    """Build the decoder from `model_dir/config.json` and fill it from the safetensors files.

    Tensors are memory-mapped and copied one at a time into the model's parameters, converting
    to `dtype` on the way (never a full-size float32 copy). With `dummy_weights` no tensor file is
    read: the weights are random (seeded), which serves any shape, the real 26B-A4B included; on
    device "meta" nothing is allocated. `quantization="int8"` swaps linear and expert weights for
    per-output-channel int8 after loading. `quantization="int4"` swaps them for group-wise 4-bit modules
    *before* loading, so each bf16 tensor is quantized as it is read (peak: the 4-bit model plus one
    source tensor); a compressed-tensors W4A16 checkpoint (its config.json says so) loads as int4
    directly, with `int4_group_size` taken from the file.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose from {QUANTIZATIONS[1:]}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {dtype}")
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{model_dir}: no config.json")
    with open(config_path, encoding="utf-8") as f:
        raw = json.load(f)
    config = Gemma4TextConfig.from_dict(raw)
    stored_group = int4_group_size(raw)
    if stored_group is not None:
        if quantization not in (None, "int4"):
            raise ValueError(f"{model_dir} holds a 4-bit checkpoint; it loads with quantization int4, not {quantization}")
        quantization = "int4"
    device = torch.device(device)
    # Parameters are allocated but never written until loaded: the bf16 tensors that the int4 swap
    # replaces below are released untouched (no resident pages).
    model = Gemma4ForCausalLM(config, dtype=dtype, device=device)
    if quantization == "int4":
        _load_int4(model, model_dir, raw, dummy_weights, seed, stored_group or int4_group)
        model.eval()
        return model, config
    if dummy_weights:
        if device.type != "meta":
            model.init_random_(seed)
    else:
        load_weights(model, model_dir, text_prefix=_text_prefix(raw))
    if quantization == "int8":
        from gemmaserve.model.quantize import quantize_model_int8_

        quantize_model_int8_(model)
    model.eval()
    return model, config


def _load_int4(model: Gemma4ForCausalLM, model_dir: Path, raw: dict, dummy: bool, seed: int, group: int) -> None:
    """Swap in the 4-bit modules, then fill them: random, from a 4-bit checkpoint, or by quantizing a
    float checkpoint tensor by tensor."""
    sinks = to_int4_(model, group)
    if dummy:
        if model.device.type != "meta":
            model.init_random_(seed)  # the float tensors left: embedding, norms, router
            init_random_int4_(model, seed)
    elif int4_group_size(raw) is not None:
        load_weights(model, model_dir, _text_prefix(raw), *compressed_sinks(model))
    else:
        filled = {n for path, m in model.named_modules() if isinstance(m, (Int4Linear, Int4Experts))
                  for n, _ in m.named_buffers(prefix=path)}
        load_weights(model, model_dir, _text_prefix(raw), sinks, filled)
    if model.device.type != "meta":
        add_int8_lm_head_(model)


def _text_prefix(raw: dict) -> str:
    # Gemma4ForConditionalGeneration nests the decoder under model.language_model.;
    # a text-only Gemma4ForCausalLM checkpoint keeps it directly under model.
    return MULTIMODAL_TEXT_PREFIX if "text_config" in raw else TEXT_ONLY_PREFIX


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the index's shards, or the single file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise CheckpointError(f"{model_dir}: shard(s) named in the index are missing: {', '.join(missing)}")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(model_dir.glob("*.safetensors"))
    if others:
        return others
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")




@torch.no_grad()
def load_weights(
    model: Gemma4ForCausalLM,
    model_dir: Path,
    text_prefix: str = MULTIMODAL_TEXT_PREFIX,
    sinks: dict[str, Callable[[torch.Tensor], None]] | None = None,
    filled: set[str] = frozenset(),
) -> None:
    """Copy every text tensor of the checkpoint into `model`'s state, tensor by tensor. `sinks` maps
    checkpoint names (without the text prefix) the model holds in another form (4-bit) to the function
    that stores them; `filled` names the model state those functions fill, and every sink must be hit.

    Raises CheckpointError naming any tensor that is mis-shaped, unexpected (a text tensor the
    model lacks, or a name outside the known prefixes) or missing (a model tensor the files lack).
    """
    targets = model.state_dict(keep_vars=True)  # name -> live Parameter / persistent buffer
    loaded: set[str] = set()
    unexpected: list[str] = []
    tied = model.config.tie_word_embeddings
    for path in checkpoint_files(Path(model_dir)):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                if key.startswith(SKIPPED_PREFIXES) or (tied and key in ("lm_head.weight", text_prefix + "lm_head.weight")):
                    continue
                name = key[len(text_prefix):] if key.startswith(text_prefix) else None
                if name is not None and sinks and name in sinks:
                    try:
                        sinks[name](f.get_tensor(key))
                    except (ValueError, RuntimeError) as exc:
                        raise CheckpointError(f"tensor {key} in {path.name}: {exc}") from exc
                    loaded.add(name)
                    continue
                if name is None or name not in targets:
                    unexpected.append(key)
                    continue
                target = targets[name]
                shape = tuple(f.get_slice(key).get_shape())
                if shape != tuple(target.shape):
                    raise CheckpointError(
                        f"tensor {key} in {path.name} has shape {list(shape)}, the config expects {list(target.shape)}"
                    )
                # One tensor at a time, memory-mapped; copy_ converts dtype (and moves to device).
                target.copy_(f.get_tensor(key))
                loaded.add(name)
    if unexpected:
        raise CheckpointError(f"unexpected tensor(s) in checkpoint: {_names(unexpected)}")
    missing = [text_prefix + n for n in [*targets, *(sinks or ())] if n not in loaded and n not in filled]
    if missing:
        raise CheckpointError(f"tensor(s) missing from checkpoint: {_names(missing)}")


@torch.no_grad()
def load_vision(
    model_dir: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    dummy_weights: bool = False,
    seed: int = 0,
) -> VisionEncoder | None:
    """The vision tower and `embed_vision` of a multimodal checkpoint (None when config.json has no
    vision_config), filled tensor by tensor from `model.vision_tower.*` / `model.embed_vision.*`."""
    model_dir = Path(model_dir)
    with open(model_dir / "config.json", encoding="utf-8") as f:
        cfg = Gemma4VisionConfig.from_dict(json.load(f))
    if cfg is None:
        return None
    enc = VisionEncoder(cfg, dtype=dtype, device=torch.device(device))
    if dummy_weights:
        return enc.init_random_(seed).eval()
    targets = {VISION_PREFIX + k: v for k, v in enc.vision_tower.state_dict(keep_vars=True).items()}
    targets.update({EMBED_PREFIX + k: v for k, v in enc.embed_vision.state_dict(keep_vars=True).items()})
    loaded: set[str] = set()
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                if not key.startswith((VISION_PREFIX, EMBED_PREFIX)):
                    continue
                if key not in targets:
                    raise CheckpointError(f"unexpected vision tensor {key} in {path.name}")
                shape = tuple(f.get_slice(key).get_shape())
                if shape != tuple(targets[key].shape):
                    raise CheckpointError(
                        f"tensor {key} in {path.name} has shape {list(shape)}, the config expects "
                        f"{list(targets[key].shape)}"
                    )
                targets[key].copy_(f.get_tensor(key))
                loaded.add(key)
    missing = [k for k in targets if k not in loaded]
    if missing:
        raise CheckpointError(f"vision tensor(s) missing from checkpoint: {_names(missing)}")
    return enc.eval()


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f" and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else "")
