"""Cluster overhead and scaling in one invocation, printing one JSON summary with ratios:

    flock /tmp/gs-bench.lock python -m benchmarks.suite.cluster_bench --model .demo-small

1. plain `gemmaserve serve` (T torch threads) vs `gemmaserve cluster serve --replicas 1` (one
   replica, T threads): TTFT p50 of lone requests and output throughput at --concurrency, through
   the Ray Serve proxy and the ingress;
2. 2 replicas x T threads vs 1 replica x T threads, same workload (Ray's --num-cpus = 2T: each
   replica gets T of its CPUs);
3. stickiness: a multi-turn chat workload (sessions in parallel, turns in order, each turn
   resending the history) on 2 replicas with and without sticky sessions: the fraction of prompt
   tokens served from the replicas' prefix caches.

Each comparison keeps its two servers up together and alternates rounds between them (A B, A B,
...; the medians of per-round ratios are reported): on a shared machine the load drifts, and both
sides see the same drift. A cluster's Ray processes live in its
process group, which is stopped whole (SIGTERM, then SIGKILL): no `ray stop --force`, which on a
shared machine would also end other sessions' clusters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.prompts import PromptVocab  # noqa: E402
from benchmarks.suite.serving import Endpoint, run_workload  # noqa: E402
from benchmarks.suite.spawn import ServerProcess, free_port  # noqa: E402
from benchmarks.suite.stats import summarize  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL_ID = "google/gemma-4-26b-a4b-it"


def _log(msg: str) -> None:
    print(f"[cluster_bench] {msg}", file=sys.stderr, flush=True)


def _spawn(cmd: list[str], threads: int, log_dir: Path, name: str) -> ServerProcess:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "gemmaserve.cli", *cmd, "--host", "127.0.0.1", "--port", str(port)]
    _log(f"starting {name}: {' '.join(argv[2:])}")
    return ServerProcess(argv, port, log_dir / f"{name}.log", env)


async def _throughput(client: httpx.AsyncClient, url: str, args, vocab: PromptVocab, seed: int) -> dict[str, Any]:
    ep = Endpoint(name="x", base_url=url, model=MODEL_ID, llama=False)
    out: dict[str, Any] = {}
    for label, conc, n in (("single", 1, args.single_prompts), ("loaded", args.concurrency, args.num_prompts)):
        warm = vocab.prompts(2, args.input_len, seed=seed + 77)
        await run_workload(client, ep, warm, [len(p) for p in warm], min(conc, 2), args.output_len, {})
        ids = vocab.prompts(n, args.input_len, seed=seed + conc)
        recs, dur = await run_workload(client, ep, ids, [len(p) for p in ids], conc, args.output_len, {})
        s = summarize(recs, dur)
        out[label] = {"concurrency": conc, "requests": n, "failed": s["failed"], "errors": s["errors"],
                      "ttft_p50_ms": s["ttft_ms"]["median"], "output_throughput": s["output_throughput"],
                      "tpot_p50_ms": s["tpot_ms"]["median"]}
        _log(f"  {label}: TTFT p50 {s['ttft_ms']['median']:.1f} ms, {s['output_throughput']:.1f} out tok/s, "
             f"failed {s['failed']}")
    return out


async def _multi_turn(client: httpx.AsyncClient, url: str, args, round_: int) -> dict[str, Any]:
    """Sessions in parallel; each turn resends the whole history (a shared system prompt first)."""
    rng = random.Random(args.seed + round_)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    system = " ".join(rng.choice(words) for _ in range(args.system_words))
    prompt_tokens = cached = 0
    later_prompt = later_cached = 0

    async def session(k: int) -> None:
        nonlocal prompt_tokens, cached, later_prompt, later_cached
        msgs = [{"role": "system", "content": f"Session {round_}.{k}. {system}"}]
        for turn in range(args.turns):
            msgs.append({"role": "user", "content": " ".join(rng.choice(words) for _ in range(args.user_words))})
            body = {"model": MODEL_ID, "messages": msgs, "max_tokens": args.turn_tokens, "ignore_eos": True,
                    "temperature": 0}
            body["session_id"] = f"bench-{round_}-{k}"  # sticky only where the cluster has stickiness on
            r = await client.post(url + "/api/v1/chat/completions", json=body)
            r.raise_for_status()
            j = r.json()
            u = j["usage"]
            c = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            prompt_tokens += u["prompt_tokens"]
            cached += c
            if turn > 0:
                later_prompt += u["prompt_tokens"]
                later_cached += c
            msgs.append({"role": "assistant", "content": j["choices"][0]["message"]["content"] or ""})

    t0 = time.perf_counter()
    await asyncio.gather(*(session(k) for k in range(args.sessions)))
    return {"sessions": args.sessions, "turns": args.turns, "duration_s": time.perf_counter() - t0,
            "prompt_tokens": prompt_tokens, "cached_tokens": cached,
            "cached_fraction": cached / prompt_tokens if prompt_tokens else None,
            "cached_fraction_after_first_turn": later_cached / later_prompt if later_prompt else None}


def _cluster_cmd(args, replicas: int, threads: int, extra: list[str] = ()) -> list[str]:
    return ["cluster", "serve", "--model", args.model, "--replicas", str(replicas), "--threads-per-replica",
            str(threads), "--cpus-per-replica", str(threads), "--num-cpus", str(2 * threads), "--object-store-mb", "100",
            "--max-model-len", str(args.max_model_len), "--log-level", "warning", *extra]


def _median(xs: list[float | None]) -> float | None:
    v = sorted(x for x in xs if x is not None)
    return None if not v else (v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2)


async def _ab(client, urls: dict[str, str], args, vocab: PromptVocab) -> dict[str, Any]:
    """Rounds alternating between the servers (A B, A B, ...), each round with its own prompts:
    on a shared machine the load drifts, and alternating exposes both to the same drift."""
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        rounds.append({name: await _throughput(client, url, args, vocab, args.seed + 1000 * r)
                       for name, url in urls.items()})
    names = list(urls)
    out: dict[str, Any] = {"rounds": rounds}
    for name in names:
        out[name] = {f"{w}_{k}": _median([rd[name][w][k] for rd in rounds])
                     for w in ("single", "loaded") for k in ("ttft_p50_ms", "output_throughput")}
    a, b = names
    out["ratio_per_round_median"] = {
        f"{w}_{k}": _median([rd[b][w][k] / rd[a][w][k] for rd in rounds if rd[a][w][k] and rd[b][w][k]])
        for w in ("single", "loaded") for k in ("ttft_p50_ms", "output_throughput")}
    out["ttft_single_added_ms_per_round_median"] = _median(
        [rd[b]["single"]["ttft_p50_ms"] - rd[a]["single"]["ttft_p50_ms"] for rd in rounds])
    return out


async def main_async(args) -> dict[str, Any]:
    log_dir = Path(args.log_dir)
    vocab = PromptVocab.from_tokenizer(args.model, args.bos_id)
    t = args.threads
    plain_cmd = ["serve", "--model", args.model, "--max-model-len", str(args.max_model_len), "--log-level", "warning"]
    procs: dict[str, ServerProcess] = {}

    async def up(name: str, cmd: list[str]) -> str:
        procs[name] = _spawn(cmd, t, log_dir, name)
        await asyncio.to_thread(procs[name].wait_ready, args.startup_timeout)
        return procs[name].base_url

    def down(name: str) -> None:
        procs.pop(name).stop(grace=30)

    one, two, off = f"cluster_1x{t}", f"cluster_2x{t}", f"cluster_2x{t}_no_sticky"
    limits = httpx.Limits(max_connections=args.concurrency + 16)
    out: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0, connect=30.0)) as client:
            # 1. the ingress's cost: plain serve vs one replica behind Serve's proxy and the ingress
            urls = {"plain_serve": await up("plain_serve", plain_cmd), one: await up(one, _cluster_cmd(args, 1, t))}
            out["plain_vs_1_replica"] = await _ab(client, urls, args, vocab)
            down("plain_serve")
            # 2. scaling: 1 replica (T threads) vs 2 replicas (T threads each)
            urls = {one: urls[one], two: await up(two, _cluster_cmd(args, 2, t))}
            out["1_vs_2_replicas"] = await _ab(client, urls, args, vocab)
            down(one)
            # 3. stickiness: the same multi-turn workload (session_id included) with and without
            urls = {two: urls[two], off: await up(off, _cluster_cmd(args, 2, t, ["--no-sticky"]))}
            sticky, loose = [], []
            for r in range(args.rounds):
                sticky.append(await _multi_turn(client, urls[two], args, r))
                loose.append(await _multi_turn(client, urls[off], args, r))
                _log(f"  round {r}: cached fraction sticky {sticky[-1]['cached_fraction']:.3f}, "
                     f"no-sticky {loose[-1]['cached_fraction']:.3f}")
            out["stickiness"] = {"sticky": sticky, "no_sticky": loose}
    finally:
        for name in list(procs):
            down(name)
    p1, p2 = out["plain_vs_1_replica"], out["1_vs_2_replicas"]
    return {
        "benchmark": "cluster",
        "threads_per_server_or_replica": t,
        "config": {k: getattr(args, k) for k in ("model", "input_len", "output_len", "concurrency", "num_prompts",
                                                  "single_prompts", "rounds", "sessions", "turns", "system_words",
                                                  "user_words", "turn_tokens")},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": out,
        "summary": {
            "ingress_ttft_added_ms_single": p1["ttft_single_added_ms_per_round_median"],
            "cluster1_over_plain": p1["ratio_per_round_median"],
            "cluster2_over_cluster1": p2["ratio_per_round_median"],
            "cached_fraction_sticky": _median([x["cached_fraction"] for x in out["stickiness"]["sticky"]]),
            "cached_fraction_no_sticky": _median([x["cached_fraction"] for x in out["stickiness"]["no_sticky"]]),
        },
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint dir (a demo model: make-demo-model --size small)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of plain serve and of each replica")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--single-prompts", type=int, default=6, help="lone requests for the TTFT comparison")
    p.add_argument("--rounds", type=int, default=3, help="alternating A/B rounds per comparison")
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system-words", type=int, default=300)
    p.add_argument("--user-words", type=int, default=30)
    p.add_argument("--turn-tokens", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--bos-id", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--log-dir", default="/tmp/gs-cluster-bench")
    return p.parse_args(argv)


def main(argv=None) -> None:
    print(json.dumps(asyncio.run(main_async(parse_args(argv))), indent=2))


if __name__ == "__main__":
    main()
