"""Isolation under hostile input: 8 ordinary streams' inter-token gap p99 while each of issue 17's
hostile request classes is being handled, against the same streams' gap p99 alone (quiet rounds
before, between and after), all on one `gemmaserve serve` in one invocation. One JSON summary.

    flock /tmp/gs-bench.lock python -m benchmarks.suite.isolation --model DIR [--streams 8]

Target (issue 17): every class's ratio to the quiet p99 under 2.0."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import httpx

from benchmarks.suite import hostile
from benchmarks.suite.stats import percentile


def cpu_record() -> dict:
    info = {"machine": platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name") and "model" not in info:
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags") and "flags" not in info:
            flags = set(line.split(":", 1)[1].split())
            info["flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    return info


def one_stream(base: str, max_tokens: int, times: list[float], ready: threading.Event) -> None:
    body = {"model": hostile.MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", base + "/api/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"finish_reason":null' in line:
                times.append(time.monotonic())
                ready.set()


def gaps_in(times: list[float], lo: float, hi: float) -> list[float]:
    """Gaps between consecutive tokens of one stream that end inside [lo, hi]."""
    return [b - a for a, b in zip(times, times[1:]) if lo <= b <= hi]


def p99(values: list[float]) -> float:
    return percentile(values, 99)


def phase(base: str, streams: int, max_tokens: int, load: Callable[[threading.Event], dict] | None) -> dict:
    """Run `streams` streams; once all have their first token, run `load` until they end. The gaps
    measured are those ending while the load ran (all of them in a quiet phase)."""
    times: list[list[float]] = [[] for _ in range(streams)]
    readies = [threading.Event() for _ in range(streams)]
    threads = [threading.Thread(target=one_stream, args=(base, max_tokens, times[i], readies[i]))
               for i in range(streams)]
    for t in threads:
        t.start()
    for e in readies:
        e.wait(600)
    stop = threading.Event()
    result: dict = {}
    worker = None
    lo = time.monotonic()
    if load is not None:
        worker = threading.Thread(target=lambda: result.update(load(stop)))
        worker.start()
    for t in threads:
        t.join()
    hi = time.monotonic()
    stop.set()
    if worker is not None:
        worker.join()
    gaps = [g for ts in times for g in gaps_in(ts, lo, hi)]
    if not gaps:  # the streams ended before the load began: nothing measured
        return {"p99_ms": None, "median_ms": None, "gaps": 0, **result}
    return {"p99_ms": round(p99(gaps) * 1000, 2), "median_ms": round(statistics.median(gaps) * 1000, 2),
            "gaps": len(gaps), **result}


class Tally:
    """Status counts from many threads."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, status: int) -> None:
        with self._lock:
            self.counts[str(status)] = self.counts.get(str(status), 0) + 1


def in_threads(work: Callable[[], None], n: int) -> None:
    ts = [threading.Thread(target=work) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def hostile_load(host: str, port: int, h: hostile.Hostile, senders: int, rate: float) -> Callable[[threading.Event], dict]:
    """`senders` connections each sending `h` again and again until stopped; status counts."""

    def run(stop: threading.Event) -> dict:
        tally = Tally()

        def loop() -> None:
            # One request in flight per sender, at most `rate` a second: the class being handled,
            # not a flood (thousands of cheap 400s a second would measure overload instead).
            while not stop.is_set():
                t = time.monotonic()
                tally.add(hostile.send(host, port, h))
                time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t)))

        in_threads(loop, senders)
        return {"statuses": tally.counts, "handled_right": all(int(s) in h.expect for s in tally.counts)}

    return run


def trickle_load(host: str, port: int, what: str, conns: int) -> Callable[[threading.Event], dict]:
    """`conns` connections trickling their headers or body; each must end in a 408."""

    def run(stop: threading.Event) -> dict:
        tally = Tally()
        in_threads(lambda: tally.add(hostile.trickle(host, port, what, 60)), conns)
        return {"statuses": tally.counts, "handled_right": set(tally.counts) == {"408"}}

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint dir (the bench model: make-demo-model DIR --size bench)")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--senders", type=int, default=2, help="connections sending a hostile class at once")
    p.add_argument("--rate", type=float, default=4.0, help="hostile requests a second per sender, at most")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated class names (default: all)")
    args = p.parse_args()

    with hostile.served(args.model, args.threads, "isolation") as srv:
        host, port, base = "127.0.0.1", srv.port, srv.base_url
        phase(base, args.streams, 8, None)  # warm-up
        quiet = [phase(base, args.streams, args.max_tokens, None)]
        results: dict[str, dict] = {}
        wanted = {n for n in args.only.split(",") if n}
        loads: list[tuple[str, Callable]] = [(h.name, hostile_load(host, port, h, args.senders, args.rate))
                                             for h in hostile.classes()]
        loads += [("slow_headers", trickle_load(host, port, "headers", 50)),
                  ("slow_body", trickle_load(host, port, "body", 50))]
        for i, (name, load) in enumerate(loads):
            if wanted and name not in wanted:
                continue
            results[name] = phase(base, args.streams, args.max_tokens, load)
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)  # progress
            if i % 5 == 4:
                quiet.append(phase(base, args.streams, args.max_tokens, None))
        quiet.append(phase(base, args.streams, args.max_tokens, None))
        base_p99 = statistics.median(q["p99_ms"] for q in quiet if q["p99_ms"] is not None)
        for r in results.values():
            r["ratio"] = None if r["p99_ms"] is None else round(r["p99_ms"] / base_p99, 2)
        measured = [r["ratio"] for r in results.values() if r["ratio"] is not None]
        summary = {
            "benchmark": "isolation", "cpu": cpu_record(), "model": args.model, "streams": args.streams,
            "max_tokens": args.max_tokens, "threads": args.threads, "senders": args.senders, "rate": args.rate,
            "quiet_p99_ms": base_p99, "quiet_rounds": [q["p99_ms"] for q in quiet],
            "classes": results,
            "max_ratio": max(measured, default=None),
            "all_under_2x": len(measured) == len(results) and all(x < 2.0 for x in measured),
            "all_handled_right": all(r.get("handled_right", False) for r in results.values()),
        }
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
