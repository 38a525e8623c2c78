"""The store's cost on the serving path: the same streamed workload against `gemmaserve serve`
with the store on (SQLite in a fresh data dir, a stored key with a spending limit: every request
reserved, charged and committed before its last byte) and off (--no-store, the same key static), in
one invocation: both servers up at once, bursts alternating round by round
(on, off, off, on, ...) so drift in machine load falls on both; the summary is each side's median,
their ratio, and the median of the per-round ratios.

    flock /tmp/gs-bench.lock .venv/bin/python -m benchmarks.suite.store_overhead --model DIR \
        --rounds 8 --concurrency 8 --num-prompts 24 --input-len 64 --output-len 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.prompts import PromptVocab  # noqa: E402
from benchmarks.suite.serving import discover, run_workload  # noqa: E402
from benchmarks.suite.spawn import SpawnSpec, start  # noqa: E402
from benchmarks.suite.stats import summarize  # noqa: E402


async def burst(client: httpx.AsyncClient, ep, args: argparse.Namespace, vocab: PromptVocab, seed: int) -> dict:
    ids = vocab.prompts(args.num_prompts, args.input_len, seed=seed)
    recs, dur = await run_workload(client, ep, list(ids), [len(p) for p in ids], args.concurrency, args.output_len, {})
    return summarize(recs, dur, [50.0])


async def main_async(args: argparse.Namespace) -> dict:
    vocab = PromptVocab.from_tokenizer(args.model, bos_id=2)
    data = tempfile.TemporaryDirectory(prefix="gs-store-bench-")
    # The store side serves a stored key with a spending limit, so every request takes the whole
    # accounting path (key lookup, reservation, charge, record); the other side the same key as a
    # static --api-key.
    made = subprocess.run([sys.executable, "-m", "gemmaserve.cli", "keys", "create", "--name", "bench",
                           "--limit", "1000000", "--limit-reset", "daily", "--data-dir", data.name],
                          capture_output=True, text=True, check=True)
    key = made.stdout.strip()
    sides = {"store": ["--data-dir", data.name], "no_store": ["--no-store", "--api-key", key]}
    procs = {}
    results: dict[str, list[dict]] = {name: [] for name in sides}
    try:
        # Both servers stay up for the whole run; only one has requests at a time, so an idle one
        # costs nothing, and alternating bursts (A B, B A, ...) spread machine-load drift over both.
        for name, extra in sides.items():
            spec = SpawnSpec("gemmaserve", args.model, name=name,
                             extra_args=["--max-num-seqs", str(args.concurrency), *extra])
            procs[name] = start(spec, args.input_len + args.output_len + 64, args.threads, Path(args.log_dir))
            await asyncio.to_thread(procs[name].wait_ready, 600)
        limits = httpx.Limits(max_connections=args.concurrency + 8)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600, connect=30),
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            eps = {name: await discover(client, name, p.base_url, None) for name, p in procs.items()}
            for name, ep in eps.items():  # warm-up burst, discarded
                await burst(client, ep, args, vocab, seed=args.seed + 7)
            for r in range(args.rounds):
                order = ["store", "no_store"] if r % 2 == 0 else ["no_store", "store"]
                for name in order:
                    # The same prompts for both sides within a round; new ones per round.
                    s = await burst(client, eps[name], args, vocab, seed=args.seed + 1000 * r)
                    results[name].append(s)
                    print(f"[store_overhead] round {r} {name}: {s['output_throughput']:.1f} out tok/s, "
                          f"{s['request_throughput']:.2f} req/s, failed {s['failed']}", file=sys.stderr, flush=True)
    finally:
        for p in procs.values():
            p.stop()
        data.cleanup()
    med = {name: {k: statistics.median(run[k] for run in runs) for k in ("output_throughput", "request_throughput")}
           for name, runs in results.items()}
    # Per-round ratios pair bursts run back to back, so slow drift cancels within a pair.
    pair = [a["output_throughput"] / b["output_throughput"] for a, b in zip(results["store"], results["no_store"])]
    return {
        "benchmark": "store_overhead",
        "config": {"model": args.model, "rounds": args.rounds, "concurrency": args.concurrency,
                   "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
                   "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "median": med,
        "per_round_output_throughput": {name: [run["output_throughput"] for run in runs]
                                        for name, runs in results.items()},
        "failed": {name: sum(run["failed"] for run in runs) for name, runs in results.items()},
        "ratio_store_over_no_store": {k: med["store"][k] / med["no_store"][k] for k in med["store"]},
        "ratio_per_round_median": statistics.median(pair),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint dir (its tokenizer makes the prompts)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default="benchmarks/out/logs")
    args = p.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
