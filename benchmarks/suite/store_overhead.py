"""The store's cost on the serving path: the same streamed workload against `gemmaserve serve`
with the store on (SQLite in a fresh data dir, every generation committed before its last byte)
and off (--no-store), in one invocation. Servers alternate round by round (on, off, off, on, ...)
so drift in machine load falls on both; the summary is each side's median and their ratio.

    flock /tmp/gs-bench.lock .venv/bin/python -m benchmarks.suite.store_overhead --model DIR \
        --rounds 4 --concurrency 16 --num-prompts 64 --input-len 64 --output-len 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
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


async def one_round(name: str, extra_args: list[str], args: argparse.Namespace, vocab: PromptVocab,
                    seed: int) -> dict:
    spec = SpawnSpec("gemmaserve", args.model, extra_args=["--max-num-seqs", str(args.concurrency), *extra_args],
                     name=name)
    proc = start(spec, args.input_len + args.output_len + 64, args.threads, Path(args.log_dir))
    try:
        await asyncio.to_thread(proc.wait_ready, 600)
        limits = httpx.Limits(max_connections=args.concurrency + 8)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600, connect=30)) as client:
            ep = await discover(client, name, proc.base_url, None)
            warm = vocab.prompts(args.concurrency, args.input_len, seed=seed + 7)
            await run_workload(client, ep, list(warm), [len(p) for p in warm], args.concurrency, args.output_len, {})
            ids = vocab.prompts(args.num_prompts, args.input_len, seed=seed)
            recs, dur = await run_workload(client, ep, list(ids), [len(p) for p in ids], args.concurrency,
                                           args.output_len, {})
        s = summarize(recs, dur, [50.0])
        print(f"[store_overhead] {name}: {s['output_throughput']:.1f} out tok/s, {s['request_throughput']:.2f} req/s, "
              f"failed {s['failed']}", file=sys.stderr, flush=True)
        return s
    finally:
        proc.stop()


async def main_async(args: argparse.Namespace) -> dict:
    vocab = PromptVocab.from_tokenizer(args.model, bos_id=2)
    sides = {"store": [], "no_store": []}
    for r in range(args.rounds):
        order = ["store", "no_store"] if r % 2 == 0 else ["no_store", "store"]
        for name in order:
            with tempfile.TemporaryDirectory(prefix="gs-store-bench-") as data:
                extra = ["--data-dir", data] if name == "store" else ["--no-store"]
                # The same prompts for both sides within a round; new ones per round.
                sides[name].append(await one_round(name, extra, args, vocab, seed=args.seed + 1000 * r))
    med = {name: {k: statistics.median(run[k] for run in runs) for k in ("output_throughput", "request_throughput")}
           for name, runs in sides.items()}
    return {
        "benchmark": "store_overhead",
        "config": {"model": args.model, "rounds": args.rounds, "concurrency": args.concurrency,
                   "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
                   "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "median": med,
        "per_round": {name: [run["output_throughput"] for run in runs] for name, runs in sides.items()},
        "ratio_store_over_no_store": {k: med["store"][k] / med["no_store"][k] for k in med["store"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint dir (its tokenizer makes the prompts)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default="benchmarks/out/logs")
    args = p.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
