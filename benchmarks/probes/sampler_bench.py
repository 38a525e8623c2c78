"""Micro-benchmark of Sampler.sample per decode step: fast path vs penalties path, batch 1/8/32; prints JSON."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gemmaserve.engine.sampler import Sampler, SamplingState
from gemmaserve.types import SamplingParams

# Each case: the SamplingParams of every row in the batch.
CASES: dict[str, dict] = {
    "greedy": dict(temperature=0.0),
    "fast_plain": dict(temperature=1.0),  # no truncation: vocab-order CDF, no sort
    "fast_gemma_defaults": dict(temperature=1.0, top_k=64, top_p=0.95),  # topk path
    "fast_top_p_only": dict(temperature=0.8, top_p=0.9),  # full sort of the vocabulary
    "penalties": dict(temperature=1.0, top_k=64, top_p=0.95, frequency_penalty=0.5,
                      presence_penalty=0.3, repetition_penalty=1.1, logit_bias={5: 2.0}),
    "seeded_logprobs": dict(temperature=1.0, top_k=64, top_p=0.95, seed=7, logprobs=5),
}


def bench_case(params: dict, batch: int, vocab: int, prompt_len: int, out_len: int, iters: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    outputs = [torch.randint(0, vocab, (out_len,), generator=g).tolist() for _ in range(batch)]
    states = [SamplingState(SamplingParams(**params), p, vocab, [1]) for p in prompts]
    sampler = Sampler(vocab, device=device, seed=0)
    logits = (torch.randn(batch, vocab, generator=g) * 4).to(device)  # [B, V]
    times = []
    for i in range(iters + 3):
        for o in outputs:  # the output grows by one token per step, as in decode
            o.append(i % vocab)
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sampler.sample(logits, states, outputs)  # .tolist() inside synchronises
        dt = time.perf_counter() - t0
        if i >= 3:  # warm-up steps excluded
            times.append(dt)
    return {"median_ms": round(statistics.median(times) * 1e3, 3), "min_ms": round(min(times) * 1e3, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {
        name: {
            f"batch_{b}": bench_case(CASES[name], b, args.vocab, args.prompt_len, args.output_len, args.iters, args.device)
            for b in args.batches
        }
        for name in args.cases
    }
    print(json.dumps({
        "benchmark": "sampler_step",
        "vocab": args.vocab,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
