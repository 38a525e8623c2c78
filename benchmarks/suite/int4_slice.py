"""A slice of the real 26B-A4B widths as a bf16 checkpoint (for GGUF conversion and the int4 vs llama.cpp
comparisons), and gemmaserve's int4 accuracy on it: per-layer relative error of each quantized
projection, next-token KL and top-1 agreement against bf16. One JSON summary per command.

    python benchmarks/suite/int4_slice.py write DIR [--layers 6]       # 5 sliding + 1 full, all 128 experts
    flock /tmp/gs-bench.lock python benchmarks/suite/int4_slice.py accuracy DIR [--positions 2048]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def write(out: Path, layers: int, seed: int, shard_bytes: int = 2 << 30) -> None:
    """The 26b-a4b demo config cut to `layers` decoder layers (the real layer-type pattern), random bf16
    weights written shard by shard as they are drawn (demo._write_weights holds them all: 11 GB here)."""
    from safetensors.torch import save_file

    from gemmaserve.demo import SMALL_VISION, demo_config, iter_demo_tensors, write_demo_model

    write_demo_model(out, "26b-a4b", write_weights=False)  # tokenizer, template, generation config
    config = demo_config("26b-a4b")
    text = config["text_config"]
    text["num_hidden_layers"] = layers
    text["layer_types"] = text["layer_types"][:layers]
    config["vision_config"] = dict(SMALL_VISION)  # the comparison is about the decoder
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shard: dict[str, torch.Tensor] = {}
    names: list[dict[str, torch.Tensor]] = []
    weight_map: dict[str, str] = {}
    size = total = 0

    def flush() -> None:
        name = f"model-{len(names) + 1:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        names.append({})
        shard.clear()

    for name, t in iter_demo_tensors(config, seed, torch.bfloat16):
        if shard and size + t.numel() * 2 > shard_bytes:
            flush()
            size = 0
        shard[name] = t
        size += t.numel() * 2
        total += t.numel() * 2
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": dict(sorted(weight_map.items()))}))


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """log-softmax of the fp32 logits [len(ids), V] of one sequence in one prefill (every row sampled)."""
    from gemmaserve.model.batch import ForwardBatch, KindMetadata

    n, bs = len(ids), 16
    kinds = [s.kind for s in model.config.attention_kinds()]
    blocks = -(-n // bs)
    caches = model.allocate_kv_caches({k: blocks for k in kinds}, bs)
    table = torch.arange(blocks, dtype=torch.int32)[None, :]  # [1, blocks]: block b at slots b*bs..
    slots = torch.arange(n, dtype=torch.int64)
    batch = ForwardBatch(
        input_ids=torch.tensor(ids, dtype=torch.int64), positions=torch.arange(n, dtype=torch.int64),
        query_start_loc=torch.tensor([0, n], dtype=torch.int32), seq_lens=torch.tensor([n], dtype=torch.int32),
        kinds={k: KindMetadata(table.clone(), slots.clone()) for k in kinds},
        logits_indices=torch.arange(n, dtype=torch.int64), block_size=bs, query_lens_cpu=[n], seq_lens_cpu=[n],
    )
    return F.log_softmax(model(batch, caches), dim=-1)


def layer_errors(model_dir: Path, group: int, samples: int = 32) -> dict[str, dict[str, float]]:
    """Relative output error ||x W^T - x Wq^T|| / ||x W^T|| of every quantized tensor on random inputs,
    mean and max per projection kind (experts: every expert of every layer)."""
    from safetensors import safe_open

    from gemmaserve.model.ct_checkpoint import _EXPERTS, _LINEAR
    from gemmaserve.ops.int4 import dequantize_int4, quantize_int4

    gen = torch.Generator().manual_seed(0)
    errs: dict[str, list[float]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                lin, exp = _LINEAR.fullmatch(key), _EXPERTS.fullmatch(key)
                if not (lin or exp):
                    continue
                kind = key.split(".")[-2] if lin else "experts." + exp[2]
                w = f.get_tensor(key).float()
                ws = w if w.dim() == 3 else w[None]
                for e in range(ws.shape[0]):
                    p, s = quantize_int4(ws[e], group)
                    x = torch.randn(samples, ws.shape[-1], generator=gen)
                    ref = x @ ws[e].T
                    got = x @ dequantize_int4(p, s, ws.shape[-1], group).T
                    errs.setdefault(kind, []).append(float((got - ref).norm() / ref.norm()))
    return {k: {"mean": round(sum(v) / len(v), 4), "max": round(max(v), 4), "n": len(v)} for k, v in errs.items()}


@torch.no_grad()
def accuracy(model_dir: Path, positions: int, seq_len: int) -> dict:
    """gemmaserve int4 vs gemmaserve bf16 on the same weights: mean next-token KL(bf16 || int4) and top-1
    agreement over `positions` positions of random-token sequences, and layer_errors."""
    from gemmaserve.model.loader import load_model
    from gemmaserve.ops.int4 import GROUP_SIZE

    cfg = json.loads((model_dir / "config.json").read_text())["text_config"]
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, cfg["vocab_size"] - 300, (seq_len,), generator=gen).tolist()
            for _ in range(math.ceil(positions / seq_len))]
    bf16, _ = load_model(model_dir)
    ref = [_logprobs(bf16, ids).to(torch.bfloat16) for ids in seqs]  # [L, V] each, 0.5 GB per 1024 rows
    del bf16
    int4, _ = load_model(model_dir, quantization="int4")
    kl, agree, n = 0.0, 0, 0
    for ids, r in zip(seqs, ref):
        q = _logprobs(int4, ids)
        rf = r.float()
        kl += float((rf.exp() * (rf - q)).sum())
        agree += int((rf.argmax(-1) == q.argmax(-1)).sum())
        n += len(ids)
    return {"positions": n, "group_size": GROUP_SIZE, "kl_mean": round(kl / n, 5), "top1_agreement": round(agree / n, 4),
            "layer_relative_error": layer_errors(model_dir, GROUP_SIZE)}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir")
    w.add_argument("--layers", type=int, default=6)
    w.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("accuracy")
    a.add_argument("dir")
    a.add_argument("--positions", type=int, default=2048)
    a.add_argument("--seq-len", type=int, default=512)
    args = ap.parse_args()
    if args.cmd == "write":
        write(Path(args.dir), args.layers, args.seed)
        print(json.dumps({"written": args.dir, "layers": args.layers}))
    else:
        print(json.dumps(accuracy(Path(args.dir), args.positions, args.seq_len)))


if __name__ == "__main__":
    main()
