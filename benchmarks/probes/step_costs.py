"""Where one engine step's time goes at B concurrent decodes: schedule, prepare, forward, sample, outputs.

    python -m benchmarks.probes.step_costs --model ~/.cache/gemmaserve-bench/bench-model --batch 32 --threads 2

Starts B requests with the same prompt length, waits until all of them decode, then times
`--steps` pure decode steps (every request gets one token, none finishes) and prints one JSON
summary: the median step and, per stage, the median milliseconds per step and its share.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.machine import machine  # noqa: E402
from gemmaserve.types import SamplingParams  # noqa: E402

# Stage name -> (attribute path on the engine, method); each is timed around every call.
STAGES: dict[str, tuple[str, str]] = {
    "schedule": ("scheduler", "schedule"),
    "prepare": ("runner", "prepare"),
    "forward": ("runner.model", "forward"),
    "sample": ("runner", "sample"),
    "on_step_done": ("scheduler", "on_step_done"),
    "outputs": ("", "_process_token"),  # token append, stop checks, detokenizer, RequestOutput
}


def _resolve(engine: Any, path: str) -> Any:
    obj = engine
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def measure(engine: Any, batch: int, steps: int, prompt_len: int, vocab: tuple[int, int], seed: int = 0) -> dict:
    """Time `steps` decode steps of `batch` requests on `engine` (an Engine; its methods are wrapped
    on the instance for the run and restored after)."""
    per_call: dict[str, list[float]] = defaultdict(list)
    restore: list[Callable[[], None]] = []
    for name, (path, method) in STAGES.items():
        obj = _resolve(engine, path)
        real = getattr(obj, method)

        def timed(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                per_call[_name].append(time.perf_counter() - t)

        setattr(obj, method, timed)
        restore.append(lambda obj=obj, method=method: delattr(obj, method))
    rng = random.Random(seed)
    lo, hi = vocab
    # Early requests decode while later ones prefill: leave room for every prefill step too.
    budget = engine.config.scheduler.max_num_batched_tokens
    n_out = steps + -(-batch * prompt_len // budget) + 8
    params = SamplingParams(max_tokens=n_out, min_tokens=n_out, temperature=0.0, ignore_eos=True)
    ids = [f"step-costs-{i}" for i in range(batch)]
    step_ms: list[float] = []
    stage_ms: dict[str, list[float]] = defaultdict(list)
    try:
        for rid in ids:
            engine.add_request(rid, [rng.randrange(lo, hi) for _ in range(prompt_len)], params)
        sched = engine.scheduler
        while len(step_ms) < steps:
            # Only pure decode steps count: all requests running, each one token from sampling.
            pure = not sched.waiting and len(sched.running) == batch and all(r.num_remaining == 1 for r in sched.running)
            per_call.clear()
            t = time.perf_counter()
            outs = engine.step()
            dt = time.perf_counter() - t
            if any(o.finished for o in outs):
                raise RuntimeError("a request finished before enough decode steps were seen")
            if not pure:
                continue
            step_ms.append(dt * 1000)
            for name in STAGES:
                stage_ms[name].append(sum(per_call.get(name, [])) * 1000)
    finally:
        for rid in ids:
            engine.abort(rid)
        for undo in restore:
            undo()
    med = statistics.median(step_ms)
    stages = {n: statistics.median(v) for n, v in stage_ms.items()}
    other = med - sum(stages.values())
    return {
        "batch": batch, "steps": len(step_ms), "step_ms_median": med,
        "stages_ms_median": {**stages, "other": other},
        "share": {n: v / med for n, v in {**stages, "other": other}.items()},
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    args = p.parse_args(argv)
    import torch

    from gemmaserve.config import engine_config_from_kwargs
    from gemmaserve.engine.engine import Engine

    torch.set_num_threads(args.threads)
    engine = Engine.from_config(engine_config_from_kwargs(
        model=args.model, max_num_seqs=max(args.batch, 1), max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=False))  # fmt: skip
    vocab = (300, min(engine.vocab_size, 30000))
    report = measure(engine, args.batch, args.steps, args.prompt_len, vocab)
    report.update(model=args.model, threads=args.threads, prompt_len=args.prompt_len, machine=machine())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
