"""A/B: decode steps with one live OpenMP pool vs with a second live pool in another thread.

    python -m benchmarks.omp_pools --model ~/.cache/gemmaserve-bench/bench-model --threads 2 --rounds 3

libgomp spin-waits between parallel regions only while it manages no more threads than there are
CPUs; once a second thread has run a parallel torch op and stays alive (a server's loader or
executor thread), it sleeps instead, and every op of a decode step pays a futex wake-up. This
times the same engine, in the thread that loaded it, alternating: (a) alone, (b) while a helper
thread holds a pool. Prints one JSON summary with per-round medians of step wall and thread CPU time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gemmaserve.types import SamplingParams  # noqa: E402


def decode_steps(engine: Any, tokens: int, prompt_len: int, rng: random.Random, vocab: tuple[int, int]) -> dict:
    """One request, `tokens` new tokens; medians over its decode steps (the prefill step excluded)."""
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0.0, ignore_eos=True)
    engine.add_request(f"omp-{time.monotonic_ns()}", [rng.randrange(*vocab) for _ in range(prompt_len)], params)
    wall, cpu = [], []
    while engine.has_unfinished_requests():
        t, c = time.perf_counter(), time.thread_time()
        engine.step()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    return {"wall_ms": statistics.median(wall[1:]), "cpu_ms": statistics.median(cpu[1:])}


def with_second_pool(work: Callable[[], dict], parallel_op: Callable[[], None]) -> dict:
    """Run `work` while a helper thread that ran `parallel_op` (creating its OpenMP pool) is alive;
    the helper exits afterwards, which frees its pool."""
    ready, done = threading.Event(), threading.Event()

    def helper() -> None:
        parallel_op()
        ready.set()
        done.wait()

    t = threading.Thread(target=helper, name="second-omp-pool")
    t.start()
    ready.wait()
    try:
        return work()
    finally:
        done.set()
        t.join()


def run_rounds(engine: Any, rounds: int, tokens: int, prompt_len: int, parallel_op: Callable[[], None],
               vocab: tuple[int, int], seed: int = 0) -> dict:
    """Alternate one-pool and two-pool runs `rounds` times, in the calling thread."""
    rng = random.Random(seed)
    one, two = [], []
    for _ in range(rounds):
        one.append(decode_steps(engine, tokens, prompt_len, rng, vocab))
        two.append(with_second_pool(lambda: decode_steps(engine, tokens, prompt_len, rng, vocab), parallel_op))
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    return {
        "one_pool": {"runs": one, "wall_ms": med(one, "wall_ms"), "cpu_ms": med(one, "cpu_ms")},
        "two_pools": {"runs": two, "wall_ms": med(two, "wall_ms"), "cpu_ms": med(two, "cpu_ms")},
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=512)
    args = p.parse_args(argv)
    out: dict[str, Any] = {}

    def body() -> None:  # everything in one non-main thread, as the server's engine loop
        import torch

        from gemmaserve.config import engine_config_from_kwargs
        from gemmaserve.engine.engine import Engine

        torch.set_num_threads(args.threads)
        engine = Engine.from_config(engine_config_from_kwargs(model=args.model, enable_prefix_caching=False))
        vocab = (300, min(engine.vocab_size, 30000))
        big = torch.ones(1 << 22)  # well above torch's parallel grain: the op forks a team

        def parallel_op() -> None:
            torch.set_num_threads(args.threads)
            big.mul(2.0)

        out.update(run_rounds(engine, args.rounds, args.tokens, args.prompt_len, parallel_op, vocab))

    t = threading.Thread(target=body, name="engine")
    t.start()
    t.join()
    print(json.dumps({"benchmark": "omp_pools", "threads": args.threads, "model": args.model, **out}, indent=2))


if __name__ == "__main__":
    main()
