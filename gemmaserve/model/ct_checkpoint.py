"""4-bit checkpoints in the compressed-tensors W4A16 "pack-quantized" layout (vLLM, llm-compressor):
write one from a bf16 checkpoint shard by shard (`gemmaserve quantize`), and read one into a model
whose projections are Int4Linear / Int4Experts.

Layout per quantized linear `P`: `P.weight_packed` [out, ceil(in/8)] int32, `P.weight_scale`
[out, ceil(in/G)] bf16, `P.weight_shape` [2] int64; experts as per-expert linears
`...experts.{e}.{gate,up,down}_proj.*` (the names llm-compressor gives MoE experts and vLLM's fused-MoE
loaders map). Everything else (embedding, norms, router, vision tower) stays as it was."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gemmaserve.model.quantize_int4 import Int4Experts, Int4Linear
from gemmaserve.ops.int4 import GROUP_SIZE, quantize_int4

FORMAT = "pack-quantized"
# Text linears that become 4-bit (model-relative names); the router and everything outside the decoder
# layers stay in their dtype (top-k choice is sensitive to rounding; the vision tower is not measured).
_LINEAR = re.compile(r"(.*layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj))\.weight$")
_EXPERTS = re.compile(r"(.*layers\.\d+\.experts)\.(gate_up_proj|down_proj)$")
_SUFFIXES = (".weight_packed", ".weight_scale", ".weight_shape")


def quantization_config(group_size: int) -> dict:
    """The config.json `quantization_config` block compressed-tensors reads for symmetric group int4."""
    return {
        "quant_method": "compressed-tensors",
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                            "group_size": group_size, "dynamic": False, "actorder": None, "observer": "minmax"},
                "input_activations": None,
                "output_activations": None,
                "format": FORMAT,
            }
        },
        "ignore": ["lm_head", "re:.*router.*", "re:.*vision.*", "re:.*audio.*", "re:.*embed.*"],
        "kv_cache_scheme": None,
    }


def int4_group_size(raw: dict) -> int | None:
    """The group size of a compressed-tensors W4A16 checkpoint's config.json, None when it has no
    quantization_config; ValueError for a compressed-tensors scheme this loader does not read."""
    qc = raw.get("quantization_config")
    if not qc:
        return None
    if qc.get("quant_method") != "compressed-tensors" or qc.get("format") != FORMAT:
        raise ValueError(f"unsupported quantization_config: method {qc.get('quant_method')!r}, format {qc.get('format')!r}")
    sizes = set()
    for group in qc.get("config_groups", {}).values():
        w = group.get("weights") or {}
        if w.get("num_bits") != 4 or w.get("type") != "int" or not w.get("symmetric", True):
            raise ValueError(f"only symmetric 4-bit int weights are supported, got {w}")
        if w.get("strategy") != "group" or not w.get("group_size"):
            raise ValueError(f"only group-wise scales are supported, got strategy {w.get('strategy')!r}")
        if group.get("input_activations"):
            raise ValueError("activation quantization (W4A8 etc.) is not supported: weight-only W4A16 only")
        sizes.add(int(w["group_size"]))
    if len(sizes) != 1:
        raise ValueError(f"expected one group size, got {sorted(sizes)}")
    return sizes.pop()


def _quantized(name: str, t: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """One checkpoint tensor -> the tensors the 4-bit checkpoint holds in its place."""
    m = _LINEAR.fullmatch(name)
    if m:
        p, s = quantize_int4(t, group_size)
        return {m[1] + ".weight_packed": p, m[1] + ".weight_scale": s, m[1] + ".weight_shape": torch.tensor(list(t.shape))}
    m = _EXPERTS.fullmatch(name)
    if m is None:
        return {name: t}
    out = {}
    for e in range(t.shape[0]):
        parts = t[e].chunk(2) if m[2] == "gate_up_proj" else (t[e],)  # gate rows first
        for proj, w in zip(("gate_proj", "up_proj") if m[2] == "gate_up_proj" else ("down_proj",), parts):
            p, s = quantize_int4(w, group_size)
            base = f"{m[1]}.{e}.{proj}"
            out.update({base + ".weight_packed": p, base + ".weight_scale": s,
                        base + ".weight_shape": torch.tensor(list(w.shape))})
    return out


def quantize_checkpoint(src: str | Path, dst: str | Path, group_size: int = GROUP_SIZE,
                        progress: Callable[[str], None] | None = None) -> Path:
    """Write DST: SRC's files with every text linear and expert tensor 4-bit, shard by shard (memory: one
    source tensor plus one output shard), config.json carrying the compressed-tensors block."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    files = _shards(src)
    weight_map: dict[str, str] = {}
    total = 0
    for i, path in enumerate(files, 1):
        shard: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                shard.update(_quantized(key, f.get_tensor(key), group_size))
        name = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        save_file(shard, str(dst / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(t.numel() * t.element_size() for t in shard.values())
        if progress:
            progress(f"{path.name} -> {name}")
    with open(dst / "model.safetensors.index.json", "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    for other in src.iterdir():
        if other.is_file() and other.suffix != ".safetensors" and other.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copyfile(other, dst / other.name)
    with open(src / "config.json", encoding="utf-8") as f:
        raw = json.load(f)
    raw["quantization_config"] = quantization_config(group_size)
    with open(dst / "config.json", "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=2)
        f.write("\n")
    return dst


def _shards(src: Path) -> list[Path]:
    """The source's safetensors files (index order, or the single file)."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            return [src / n for n in sorted(set(json.load(f)["weight_map"].values()))]
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src}: no safetensors files")
    return files


def compressed_sinks(model: torch.nn.Module) -> tuple[dict[str, Callable[[torch.Tensor], None]], set[str]]:
    """For a model after quantize_int4.to_int4_: (checkpoint name relative to the text prefix -> function
    that stores that tensor in place, the model state names those functions fill)."""
    sinks: dict[str, Callable[[torch.Tensor], None]] = {}
    filled: set[str] = set()
    for path, mod in model.named_modules():
        if isinstance(mod, Int4Linear):
            sinks[path + ".weight_packed"] = _copy_into(mod.weight_packed)
            sinks[path + ".weight_scale"] = _copy_into(mod.weight_scale)
            sinks[path + ".weight_shape"] = _shape_check([mod.out_features, mod.in_features])
            filled.update({path + ".weight_packed", path + ".weight_scale"})
        elif isinstance(mod, Int4Experts):
            i = mod.inter
            for e in range(mod.gate_up_packed.shape[0]):
                for proj, rows, packed, scale, shape in (
                    ("gate_proj", slice(0, i), mod.gate_up_packed, mod.gate_up_scale, [i, mod.hidden]),
                    ("up_proj", slice(i, 2 * i), mod.gate_up_packed, mod.gate_up_scale, [i, mod.hidden]),
                    ("down_proj", slice(None), mod.down_packed, mod.down_scale, [mod.hidden, i]),
                ):
                    base = f"{path}.{e}.{proj}"
                    sinks[base + ".weight_packed"] = _copy_into(packed[e, rows])
                    sinks[base + ".weight_scale"] = _copy_into(scale[e, rows])
                    sinks[base + ".weight_shape"] = _shape_check(shape)
            filled.update(f"{path}.{b}" for b in ("gate_up_packed", "gate_up_scale", "down_packed", "down_scale"))
    return sinks, filled


def _copy_into(target: torch.Tensor) -> Callable[[torch.Tensor], None]:
    def sink(t: torch.Tensor) -> None:
        if tuple(t.shape) != tuple(target.shape) or t.dtype != target.dtype:
            raise ValueError(f"has {t.dtype} {list(t.shape)}, the config expects {target.dtype} {list(target.shape)}")
        target.copy_(t)

    return sink


def _shape_check(shape: list[int]) -> Callable[[torch.Tensor], None]:
    def sink(t: torch.Tensor) -> None:
        if t.tolist() != shape:
            raise ValueError(f"records weight shape {t.tolist()}, the config expects {shape}")

    return sink
