"""The 26B-A4B shape at 4 bits on this CPU: load time and RSS, KV room, prefill and decode speed through
the engine, and the 4-bit bandwidth roofline. Prints one JSON summary.

    flock /tmp/gs-bench.lock python benchmarks/suite/int4_26b.py --model DIR [--dummy-weights]

DIR: a `make-demo-model --size 26b-a4b` directory (with --dummy-weights) or a checkpoint written by
`gemmaserve quantize`. Needs ~15 GiB free: take the bench lock."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def rss_gib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in GiB."""
    cur = peak = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 2**20
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 2**20
    return cur, peak


def active_int4_bytes(model) -> dict[str, float]:
    """Bytes one decode token reads at the shape: all non-expert weights, top_k of E experts per layer."""
    cfg = model.config
    experts = dense = 0
    for name, b in list(model.named_buffers()) + list(model.named_parameters()):
        n = b.numel() * b.element_size()
        if ".experts." in name:
            experts += n
        elif name.startswith("embed_tokens") or name.startswith("lm_head"):
            continue
        else:
            dense += n
    head = model.lm_head_int8.qweight.numel() if model.lm_head_int8 is not None else 2 * model.embed_tokens.weight.numel()
    per_token = dense + experts * cfg.top_k_experts / cfg.num_experts + head
    return {"experts_gib": experts / 2**30, "dense_gib": dense / 2**30, "head_gib": head / 2**30,
            "per_decode_token_gib": per_token / 2**30}


def read_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """This machine's streaming read bandwidth with torch's threads: the best of 5 sums over 1 GiB."""
    buf = torch.ones(nbytes // 8, dtype=torch.int64)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    del buf
    return nbytes / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--kv-tokens", type=int, default=32768)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=16)
    args = ap.parse_args()

    from gemmaserve.engine.kv_cache import kind_bytes_per_token, kv_cache_report
    from gemmaserve.engine.llm import LLM
    from gemmaserve.model.config import Gemma4TextConfig
    from gemmaserve.ops import cpu_int4
    from gemmaserve.ops.int4 import GROUP_SIZE
    from gemmaserve.types import SamplingParams

    raw = json.loads((Path(args.model) / "config.json").read_text())
    cfg = Gemma4TextConfig.from_dict(raw)
    # The engine's sliding pool also holds one step's new tokens (kv_cache.derive_num_blocks).
    sliding = next(s for s in cfg.attention_kinds() if s.window is not None)
    # 1% more for block rounding (derive_num_blocks hands out whole blocks per kind).
    kv = int(1.01 * (kv_cache_report(cfg, args.kv_tokens)["total"] + 2048 * kind_bytes_per_token(sliding, 2)))
    t0 = time.perf_counter()
    # One sequence: its KV for kv_tokens (sliding layers hold a window, full layers every token).
    kwargs = dict(quantization="int4", dummy_weights=args.dummy_weights, kv_cache_memory_bytes=kv, max_num_seqs=1,
                  max_model_len=max(args.kv_tokens, args.prompt + args.decode))
    llm = LLM(args.model, **kwargs)
    load_s = time.perf_counter() - t0
    rss_load, peak_load = rss_gib()
    model = llm.engine.runner.model
    sizes = active_int4_bytes(model)
    bandwidth = read_bandwidth_gbs()

    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, cfg.vocab_size - 10, (args.prompt,), generator=gen).tolist()
    # Prefill: a max_tokens=1 request (its time is the prompt's forward plus one sample).
    t0 = time.perf_counter()
    llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    prefill_s = time.perf_counter() - t0
    # Decode: a short prompt, then args.decode tokens; the first step (prefill) is subtracted.
    short = prompt[:8]
    t0 = time.perf_counter()
    llm.generate([short], SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm.generate([short[::-1]], SamplingParams(max_tokens=args.decode + 1, temperature=0.0, ignore_eos=True))
    decode_s = time.perf_counter() - t0 - first
    rss_end, peak_end = rss_gib()
    tok_s = args.decode / decode_s
    out = {
        "cpu": platform.processor() or "AMD EPYC", "threads": torch.get_num_threads(), "int4_tier": cpu_int4.best_tier(),
        "group_size": GROUP_SIZE, "load_s": round(load_s, 1),
        "rss_after_load_gib": round(rss_load, 2), "peak_rss_load_gib": round(peak_load, 2),
        "kv_tokens": args.kv_tokens, "kv_gib": round(kv / 2**30, 3),
        "rss_end_gib": round(rss_end, 2), "peak_rss_gib": round(peak_end, 2),
        "prefill_tokens": args.prompt, "prefill_tok_s": round(args.prompt / prefill_s, 2),
        "decode_tok_s": round(tok_s, 3), "decode_ms_per_token": round(1000 / tok_s, 1),
        **{k: round(v, 3) for k, v in sizes.items()},
    }
    roof = bandwidth * 1e9 / (sizes["per_decode_token_gib"] * 2**30)
    out.update({"read_bandwidth_gbs": round(bandwidth, 1), "roofline_tok_s": round(roof, 2),
                "fraction_of_roofline": round(tok_s / roof, 3)})
    print(json.dumps(out))
    os._exit(0)  # skip tearing down 13 GiB of tensors one by one


if __name__ == "__main__":
    main()
