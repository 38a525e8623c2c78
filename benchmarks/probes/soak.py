"""Hostile-input soak: rounds of every issue-17 class, schema-fuzzed bodies, client disconnects
mid-stream and ordinary requests against one `gemmaserve serve`; after each round the server must
be idle again. Reports per-class status counts, 5xx and resets, KV blocks still held when idle,
and the server's RSS per round (a leak shows as RSS climbing round over round). One JSON summary.

    flock /tmp/gs-bench.lock python -m benchmarks.probes.soak --model DIR [--rounds 10]

Longer than the CI fuzz (tests/api/test_fuzz_api.py): random seeds, more examples, many rounds."""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from benchmarks.suite import hostile
from benchmarks.suite.isolation import cpu_record

ORDINARY = {"model": hostile.MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def fuzz_bodies(n: int, rng: random.Random) -> list[bytes]:
    """Random mutations of valid bodies: wrong types, huge/odd numbers, odd unicode, missing parts."""
    values = [None, True, -1, 0, 1e-300, 1e300, 2**70, "", "x" * 10_000, "\ud800", [], {}, [[[]]], "\u0000"]
    keys = ["model", "messages", "max_tokens", "temperature", "top_p", "top_k", "stop", "tools", "tool_choice",
            "response_format", "logit_bias", "seed", "stream", "reasoning", "logprobs", "top_logprobs", "n"]
    out = []
    for _ in range(n):
        body = dict(ORDINARY)
        for _ in range(rng.randint(1, 3)):
            body[rng.choice(keys)] = rng.choice(values)
        out.append(json.dumps(body).encode("utf-8", "surrogatepass"))
    return out


def disconnect_mid_stream(base: str) -> str:
    body = {**ORDINARY, "max_tokens": 64, "stream": True, "ignore_eos": True}
    try:
        with httpx.stream("POST", base + "/api/v1/chat/completions", json=body, timeout=60) as r:
            for _ in r.iter_lines():
                break  # leave after the first line: the server must abort and free the blocks
        return "left"
    except httpx.HTTPError:
        return "error"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--fuzz", type=int, default=200, help="random bodies per round")
    p.add_argument("--disconnects", type=int, default=20, help="streams left mid-way per round")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    rng = random.Random(args.seed)

    with hostile.served(args.model, args.threads, "soak") as srv:
        host, port, base = "127.0.0.1", srv.port, srv.base_url
        proc = psutil.Process(srv.proc.pid)
        counts: dict[str, dict[str, int]] = {}
        lock = threading.Lock()

        def note(cls: str, status) -> None:
            with lock:
                c = counts.setdefault(cls, {})
                c[str(status)] = c.get(str(status), 0) + 1

        def post(body: bytes) -> int:
            try:
                return httpx.post(base + "/api/v1/chat/completions", content=body, timeout=120,
                                  headers={"content-type": "application/json"}).status_code
            except httpx.HTTPError:
                return -1

        rounds = []
        classes = hostile.classes()
        for rnd in range(args.rounds):
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.workers) as pool:
                jobs = [(h.name, pool.submit(hostile.send, host, port, h)) for h in classes]
                jobs += [("fuzz", pool.submit(post, b)) for b in fuzz_bodies(args.fuzz, rng)]
                jobs += [("disconnect", pool.submit(disconnect_mid_stream, base)) for _ in range(args.disconnects)]
                jobs += [("ordinary", pool.submit(post, json.dumps(ORDINARY).encode())) for _ in range(20)]
                jobs += [("slow_headers", pool.submit(hostile.trickle, host, port, "headers", 30))]
                for name, fut in jobs:
                    note(name, fut.result())
            # Idle: nothing may still run or hold KV blocks.
            deadline = time.monotonic() + 30
            while True:
                m = httpx.get(base + "/metrics", timeout=10).text
                running, waiting = metric(m, "gemmaserve_num_requests_running"), metric(m, "gemmaserve_num_requests_waiting")
                kv = metric(m, "gemmaserve_kv_cache_usage_ratio")
                if (running == 0 and waiting == 0 and kv == 0) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            rounds.append({"round": rnd, "seconds": round(time.monotonic() - t0, 1),
                           "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                           "running": running, "waiting": waiting, "kv_usage_when_idle": kv,
                           "health": httpx.get(base + "/health", timeout=10).status_code})
        expect = {h.name: {str(s) for s in h.expect} for h in classes}
        wrong = {n: {s: c for s, c in cs.items() if s not in expect[n]} for n, cs in counts.items() if n in expect}
        summary = {
            "benchmark": "soak", "cpu": cpu_record(), "model": args.model, "rounds": rounds, "counts": counts,
            "server_errors_5xx": sum(c for cs in counts.values() for s, c in cs.items() if s.startswith("5")
                                     and s != "503"),
            "no_response": sum(cs.get("-1", 0) for n, cs in counts.items() if n != "disconnect"),
            "hostile_wrong_status": {n: w for n, w in wrong.items() if w},
            "kv_leak": any(r["kv_usage_when_idle"] != 0 for r in rounds),
            "rss_growth_mb": round(rounds[-1]["rss_mb"] - rounds[0]["rss_mb"], 1) if rounds else None,
        }
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
