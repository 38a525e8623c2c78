"""Where prefill time goes, on CPU or CUDA: one engine, prompts prefilled under torch.profiler (top ops
by self device time on CUDA, self CPU time on CPU), and with --ab a same-process A/B of the MoE's
grouped-GEMM path (KernelPolicy.grouped_mm) for prefill and, after re-capturing the decode graphs, decode.

    python -m benchmarks.probes.profile_prefill --model /tmp/g26 --dummy-weights --device cuda --ab
    python -m benchmarks.probes.profile_prefill --model .bench-model --input-len 512

Prints one JSON: prefill ms per prompt (median of --repeats), decode ms per step for --batches,
and the profile's top ops.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.machine import machine  # noqa: E402
from benchmarks.suite.prompts import PromptVocab  # noqa: E402


class Bench:
    """Drives one engine: timed prefills (max_tokens=1) and timed steady decode steps."""

    def __init__(self, engine: Any, vocab: PromptVocab, input_len: int, device: str) -> None:
        import torch

        self.engine, self.vocab, self.p = engine, vocab, input_len
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.n = 0

    def _run(self, batch: int, new_tokens: int) -> list[list[float]]:
        from gemmaserve.types import SamplingParams

        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        rids = [f"p{self.n}-{i}" for i in range(batch)]
        for rid, prompt in zip(rids, self.vocab.prompts(batch, self.p, seed=1000 + self.n)):
            self.engine.add_request(rid, prompt, params)
        self.n += 1
        stamps: dict[str, list[float]] = {r: [] for r in rids}
        self.sync()
        t0 = time.perf_counter()
        while self.engine.has_unfinished_requests():
            for o in self.engine.step():
                stamps[o.request_id].extend([time.perf_counter() - t0] * len(o.new_token_ids))
        return list(stamps.values())

    def prefill_ms(self) -> float:
        """One prompt alone, to its first token."""
        return 1000 * self._run(1, 1)[0][0]

    def decode_ms(self, batch: int, steps: int = 32) -> float:
        """Per decode step with `batch` requests running, after every prefill is done."""
        times = self._run(batch, steps + 2)
        start = max(ts[0] for ts in times)
        end = max(ts[-1] for ts in times)
        n = max(sum(1 for t in ts if t > start) for ts in times)
        return 1000 * (end - start) / n


def top_ops(prof: Any, device: bool, n: int, per: int) -> list[dict[str, Any]]:
    events = prof.key_averages()
    key = (lambda e: e.self_device_time_total) if device else (lambda e: e.self_cpu_time_total)
    total = sum(key(e) for e in events) or 1
    return [{"op": e.key, "self_ms": key(e) / 1000 / per, "share": key(e) / total, "calls": e.count // per}
            for e in sorted(events, key=key, reverse=True)[:n]]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dummy-weights", action="store_true")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 32])
    p.add_argument("--ab", action="store_true", help="A/B the grouped-GEMM MoE path (off vs on)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--llm-kwargs", default='{"max_num_seqs": 32, "max_model_len": 4096}')
    args = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    import dataclasses

    from gemmaserve.engine.llm import LLM

    torch.set_num_threads(args.threads)
    kw = json.loads(args.llm_kwargs) | ({"dummy_weights": True} if args.dummy_weights else {})
    engine = LLM(model=args.model, dtype="bfloat16", device=args.device, **kw).engine
    bench = Bench(engine, PromptVocab.from_tokenizer(args.model, 2), args.input_len, args.device)
    on_cuda = args.device.startswith("cuda")
    graphs = getattr(engine.runner, "graphs", None)

    policy = engine.runner.kernel_policy  # the engine's policy, built once from its config and the device

    def use(flag: bool) -> None:
        engine.runner.model.use_kernel_policy(dataclasses.replace(policy, grouped_mm=flag))

    def variant(flag: bool) -> None:
        use(flag)
        if graphs is not None and graphs.capture_enabled:
            graphs.capture()  # decode graphs record the MoE form chosen at capture time

    flags = [False, True] if args.ab else [policy.grouped_mm]
    result: dict[str, Any] = {"machine": machine(), "config": vars(args) | {"torch": torch.__version__,
                                                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    prefill: dict[bool, list[float]] = {f: [] for f in flags}
    for f in flags:  # warm-up of both paths
        variant(f)
        bench.prefill_ms()
        bench.decode_ms(1, 4)
    for _ in range(args.repeats):  # prefill interleaved: flipping the flag is free for eager prefill
        for f in flags:
            use(f)
            prefill[f].append(bench.prefill_ms())
    for f in flags:
        name = "grouped_mm" if f else "baseline"
        variant(f)
        result[name] = {
            "prefill_ms": statistics.median(prefill[f]),
            "prefill_tok_s": 1000 * args.input_len / statistics.median(prefill[f]),
            **{f"decode_ms_b{b}": statistics.median(bench.decode_ms(b) for _ in range(2)) for b in args.batches},
        }
        print(f"[profile_prefill] {name}: {json.dumps(result[name])}", file=sys.stderr, flush=True)
    if args.ab:
        a, b = result["baseline"], result["grouped_mm"]
        result["speedup_grouped_mm"] = {k: a[k] / b[k] for k in a if "_ms" in k}

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            bench.prefill_ms()
    result["prefill_profile"] = top_ops(prof, on_cuda, args.top, 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
