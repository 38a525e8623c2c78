"""Interactive TTFT beside a running batch: one gemmaserve server, three background conditions
measured in alternating rounds of one invocation, and one JSON summary with ratios.

    flock /tmp/gs-bench.lock python -m benchmarks.suite.batch_ttft --model MODEL_DIR

Conditions: `idle` (nothing else running), `batch` (a /api/beta/batches job of --batch-items
completions, which the server runs at background priority, --batch-concurrency at a time) and
`same_load_interactive` (the same requests sent directly, as ordinary interactive traffic, at the
same concurrency: what the batch would cost interactive users without the priority). In each
condition --probes interactive streaming completions run one after another and their time to the
first text chunk is taken. Rounds alternate the conditions so drift on a shared machine hits all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.prompts import PromptVocab  # noqa: E402
from benchmarks.suite.spawn import SpawnSpec, start  # noqa: E402
from benchmarks.suite.stats import percentile  # noqa: E402

MODEL_ID = "google/gemma-4-26b-a4b-it"


def completion(prompt: list[int], out_len: int, stream: bool) -> dict[str, Any]:
    return {"model": MODEL_ID, "prompt": prompt, "max_tokens": out_len, "min_tokens": out_len, "ignore_eos": True,
            "temperature": 0.0, "stream": stream}


async def probe(client: httpx.AsyncClient, prompt: list[int], out_len: int) -> float:
    """Seconds from sending a streaming completion to its first chunk with text."""
    t0 = time.perf_counter()
    async with client.stream("POST", "/v1/completions", json=completion(prompt, out_len, True)) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("choices", [{}])[0].get("text"):
                return time.perf_counter() - t0
    raise RuntimeError("stream ended without text")


class Background:
    """The load one condition puts beside the probes; `stop()` ends it and reports items done."""

    def __init__(self, client: httpx.AsyncClient, kind: str, prompts: list[list[int]], out_len: int, conc: int,
                 settle_s: float):
        self.client, self.kind, self.prompts, self.out_len, self.conc = client, kind, prompts, out_len, conc
        self.settle_s = settle_s
        self.batch_id: str | None = None
        self.tasks: list[asyncio.Task] = []
        self.done = 0

    async def start(self) -> None:
        if self.kind == "batch":
            reqs = [{"custom_id": str(i), "body": completion(p, self.out_len, False)} for i, p in enumerate(self.prompts)]
            r = await self.client.post("/api/beta/batches", json={"endpoint": "/v1/completions", "requests": reqs})
            r.raise_for_status()
            self.batch_id = r.json()["id"]
        elif self.kind == "same_load_interactive":
            queue: asyncio.Queue = asyncio.Queue()
            for p in self.prompts:
                queue.put_nowait(p)

            async def worker() -> None:
                while not queue.empty():
                    r = await self.client.post("/v1/completions", json=completion(queue.get_nowait(), self.out_len, False))
                    r.raise_for_status()
                    self.done += 1

            self.tasks = [asyncio.create_task(worker()) for _ in range(self.conc)]
        if self.kind != "idle":
            await asyncio.sleep(self.settle_s)  # let the load reach its steady state (rows in every step)

    async def stop(self) -> int:
        if self.batch_id is not None:
            b = (await self.client.post(f"/api/beta/batches/{self.batch_id}/cancel")).json()
            self.done = b["request_counts"]["completed"]
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return self.done


async def run(args: argparse.Namespace, base_url: str, vocab: PromptVocab) -> dict[str, Any]:
    conditions = ["idle", "batch", "same_load_interactive"]
    ttft: dict[str, list[float]] = {c: [] for c in conditions}
    done: dict[str, list[int]] = {c: [] for c in conditions}
    seed = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        await probe(client, vocab.prompts(1, args.input_len, 999)[0], 2)  # warm-up
        for rnd in range(args.rounds):
            order = conditions[rnd % 3:] + conditions[:rnd % 3]
            for cond in order:
                seed += 1
                bg = Background(client, cond, vocab.prompts(args.batch_items, args.input_len, 10_000 + seed),
                                args.batch_output_len, args.batch_concurrency, args.settle)
                await bg.start()
                t_start = time.perf_counter()
                for p in vocab.prompts(args.probes, args.input_len, seed):
                    ttft[cond].append(await probe(client, p, args.probe_output_len))
                    await asyncio.sleep(args.gap)
                window = time.perf_counter() - t_start
                done[cond].append(await bg.stop())
                print(f"round {rnd} {cond}: ttft p50 {percentile(ttft[cond][-args.probes:], 50) * 1000:.0f} ms, "
                      f"background items done {done[cond][-1]} in {window:.1f}s", file=sys.stderr)
    summary: dict[str, Any] = {}
    for c in conditions:
        summary[c] = {"ttft_ms_p50": round(percentile(ttft[c], 50) * 1000, 1),
                      "ttft_ms_p90": round(percentile(ttft[c], 90) * 1000, 1),
                      "probes": len(ttft[c]), "background_items_done": sum(done[c])}
    idle = summary["idle"]["ttft_ms_p50"]
    summary["ratios"] = {f"{c}_vs_idle_ttft_p50": round(summary[c]["ttft_ms_p50"] / idle, 3) for c in conditions[1:]}
    return summary


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory (the bench model)")
    ap.add_argument("--spawn-args", default="", help="extra `gemmaserve serve` flags")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probes", type=int, default=10, help="interactive requests per condition and round")
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between probes")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds a background load runs before probes")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--probe-output-len", type=int, default=4)
    ap.add_argument("--batch-items", type=int, default=2000)
    ap.add_argument("--batch-output-len", type=int, default=64)
    ap.add_argument("--batch-concurrency", type=int, default=8)
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/gemmaserve-bench-logs"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    spec = SpawnSpec("gemmaserve", args.model, name="gemmaserve",
                     extra_args=args.spawn_args.split() + ["--batch-concurrency", str(args.batch_concurrency)])
    server = start(spec, args.input_len + args.batch_output_len, args.threads, args.log_dir)
    try:
        server.wait_ready()
        vocab = PromptVocab.from_tokenizer(args.model, bos_id=2)
        summary = asyncio.run(run(args, server.base_url, vocab))
    finally:
        server.stop()
    summary["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
