"""Serving benchmark in the manner of `vllm bench serve`: streams random-token completions at a
fixed concurrency against one or more OpenAI-compatible endpoints and prints one JSON summary.

    python -m benchmarks.suite.serving --spawn gemmaserve:.bench-model --spawn llama:bench.gguf:32 \
        --num-prompts 64 --concurrency 32 --input-len 512 --output-len 128
    python -m benchmarks.suite.serving --endpoint ours=http://127.0.0.1:8000 --endpoint llama=http://127.0.0.1:8080 ...

Every endpoint gets the same prompts (token-id arrays: exactly --input-len tokens, BOS first),
exactly --output-len new tokens (ignore_eos + min_tokens/max_tokens, and n_predict for llama.cpp),
greedy sampling, fresh prompts per repetition so prefix caches cannot help. Ratios are against the
first endpoint. Spawned servers run one at a time so an idle one cannot steal cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.prompts import PromptVocab  # noqa: E402
from benchmarks.suite.machine import machine  # noqa: E402
from benchmarks.suite.spawn import DEFAULT_LLAMA_SERVER, ServerProcess, SpawnSpec, start  # noqa: E402
from benchmarks.suite.stats import RequestRecord, median_summary, ratios, summarize  # noqa: E402


@dataclass
class Target:
    """An endpoint to benchmark, either given (url) or spawned here (spec)."""

    name: str
    url: str | None = None
    spec: SpawnSpec | None = None


@dataclass
class Endpoint:
    name: str
    base_url: str
    model: str
    llama: bool  # llama.cpp's server: send its native n_predict as well


# -- one request -----------------------------------------------------------------------------------
def request_body(ep: Endpoint, prompt: list[int] | str, output_len: int, extra: dict[str, Any]) -> dict:
    body: dict[str, Any] = {
        "model": ep.model,
        "prompt": prompt,
        "max_tokens": output_len,
        "min_tokens": output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ep.llama:
        body["n_predict"] = output_len
    body.update(extra)
    return body


async def stream_one(
    client: httpx.AsyncClient, ep: Endpoint, body: dict, prompt_len: int
) -> RequestRecord:
    """Send one streaming completion; stamp each SSE chunk that carries output text."""
    rec = RequestRecord(start=time.perf_counter(), prompt_tokens=prompt_len)
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", ep.base_url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                raise RuntimeError(f"HTTP {resp.status_code}: {text[:200]}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and ": keep-alive" comments
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise RuntimeError(f"stream error: {json.dumps(chunk['error'])[:200]}")
                now = time.perf_counter()
                choices = chunk.get("choices") or []
                if any(c.get("text") for c in choices):
                    rec.chunk_times.append(now)
                    chunks += 1
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                    if usage.get("prompt_tokens") is not None:
                        rec.prompt_tokens = int(usage["prompt_tokens"])
        rec.end = time.perf_counter()
        rec.output_tokens = usage_tokens if usage_tokens is not None else chunks
        if not rec.chunk_times:
            raise RuntimeError("no output chunk")
    except Exception as exc:  # a failed request is counted, not fatal
        rec.end = time.perf_counter()
        rec.success = False
        rec.error = f"{type(exc).__name__}: {exc}"
    return rec


async def run_workload(
    client: httpx.AsyncClient,
    ep: Endpoint,
    prompts: list[list[int] | str],
    prompt_lens: list[int],
    concurrency: int,
    output_len: int,
    extra: dict[str, Any],
) -> tuple[list[RequestRecord], float]:
    """All requests ready at t=0 (request rate inf), at most `concurrency` in flight."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(prompts)):
        queue.put_nowait(i)
    records: list[RequestRecord | None] = [None] * len(prompts)
    # Requests are taken in index order and every worker takes one at t=0: the first
    # `concurrency` indices are the burst, every later one replaces a finished request.
    burst = min(concurrency, len(prompts))

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = request_body(ep, prompts[i], output_len, extra)
            rec = await stream_one(client, ep, body, prompt_lens[i])
            rec.burst = i < burst
            records[i] = rec

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
    duration = time.perf_counter() - t0
    return [r for r in records if r is not None], duration


async def discover(client: httpx.AsyncClient, name: str, base_url: str, model: str | None) -> Endpoint:
    """The served model id (from /v1/models unless given) and whether this is llama.cpp."""
    base_url = base_url.rstrip("/")
    for suffix in ("/v1/completions", "/v1"):
        if base_url.endswith(suffix):
            base_url = base_url[: -len(suffix)]
    if model is None:
        r = await client.get(base_url + "/v1/models")
        r.raise_for_status()
        model = r.json()["data"][0]["id"]
    llama = False
    try:
        props = await client.get(base_url + "/props")
        llama = props.status_code == 200 and "default_generation_settings" in props.json()
    except (httpx.HTTPError, ValueError):
        pass
    return Endpoint(name=name, base_url=base_url, model=model, llama=llama)


# -- the whole benchmark ---------------------------------------------------------------------------
async def bench_endpoint(
    ep: Endpoint, args: argparse.Namespace, vocab: PromptVocab, client: httpx.AsyncClient
) -> list[dict[str, Any]]:
    extra = json.loads(args.extra_body) if args.extra_body else {}
    results = []
    for i, c in enumerate(args.concurrency):
        n = args.num_prompts[min(i, len(args.num_prompts) - 1)] or max(4 * c, 8)
        if args.warmup:
            warm = vocab.prompts(args.warmup, args.input_len, seed=args.seed + 999_983 + c)
            warm_lens = [len(p) for p in warm]
            await run_workload(client, ep, _encode(warm, args, vocab), warm_lens, c, args.output_len, extra)
        runs = []
        for rep in range(args.repeats):
            # Same prompts on every endpoint; new ones per repetition so prefix caches cannot help.
            ids = vocab.prompts(n, args.input_len, seed=args.seed + 1000 * rep + c)
            recs, dur = await run_workload(
                client, ep, _encode(ids, args, vocab), [len(p) for p in ids], c, args.output_len, extra
            )
            s = summarize(recs, dur, args.percentiles)
            s["output_len_mismatch"] = sum(1 for r in recs if r.success and r.output_tokens != args.output_len)
            runs.append(s)
            _log(f"{ep.name} c={c} rep={rep}: {s['output_throughput']:.1f} out tok/s, "
                 f"TTFT p50 {_ms(s['ttft_ms'])} (burst of {min(c, n)}: {_ms(s['ttft_burst_ms'])}, "
                 f"steady {n - min(c, n)}: {_ms(s['ttft_steady_ms'])}), failed {s['failed']}")
        results.append({"endpoint": ep.name, "url": ep.base_url, "model": ep.model, "llama_cpp": ep.llama,
                        "concurrency": c, "num_prompts": n, "summary": median_summary(runs),
                        "runs": runs if len(runs) > 1 else []})
    return results


def _ms(dist: dict[str, Any]) -> str:
    return "n/a" if dist.get("median") is None else f"{dist['median']:.0f} ms"


def _encode(ids: list[list[int]], args: argparse.Namespace, vocab: PromptVocab) -> list[list[int] | str]:
    return [vocab.as_text(p) for p in ids] if args.prompt_type == "text" else list(ids)


def _log(msg: str) -> None:
    print(f"[serving] {msg}", file=sys.stderr, flush=True)


def compare(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per concurrency: every endpoint's headline numbers over the first endpoint's."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    by_c: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_c.setdefault(r["concurrency"], []).append(r)
    for c, rows in by_c.items():
        base = rows[0]
        out[str(c)] = {
            f"{r['endpoint']}/{base['endpoint']}": ratios(r["summary"], base["summary"]) for r in rows[1:]
        }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    targets = _targets(args)
    vocab = _vocab(args, targets)
    conns = max(args.concurrency) + 8
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    timeout = httpx.Timeout(args.request_timeout, connect=30.0)
    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        for t in targets:
            proc: ServerProcess | None = None
            try:
                url = t.url
                if t.spec is not None:
                    ctx = args.input_len + args.output_len + 64
                    proc = start(t.spec, ctx, args.threads, Path(args.log_dir), Path(args.llama_server))
                    _log(f"starting {t.name}: {shlex.join(proc.argv)}")
                    await asyncio.to_thread(proc.wait_ready, args.startup_timeout)
                    url = proc.base_url
                assert url is not None
                ep = await discover(client, t.name, url, args.model)
                rows = await bench_endpoint(ep, args, vocab, client)
                for row in rows:  # how the server was started, for RESULTS.md
                    row["server_argv"] = proc.argv if proc is not None else None
                results.extend(rows)
            finally:
                if proc is not None:
                    proc.stop()
    return {
        "benchmark": "serving",
        "machine": machine(),
        "config": {
            "input_len": args.input_len, "output_len": args.output_len, "concurrency": args.concurrency,
            "num_prompts": args.num_prompts, "repeats": args.repeats, "warmup": args.warmup,
            "prompt_type": args.prompt_type, "seed": args.seed, "threads": args.threads,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "results": results,
        "ratios": compare(results),
    }  # fmt: skip


def _targets(args: argparse.Namespace) -> list[Target]:
    targets: list[Target] = []
    for e in args.endpoint:
        name, sep, url = e.partition("=")
        if not sep:
            name, url = f"endpoint{len(targets)}", e
        targets.append(Target(name=name, url=url))
    # Per-server args (A/B of two configs of one server in one invocation) replace the per-kind ones.
    own = dict(a.split("=", 1) for a in args.spawn_args)
    for s in args.spawn:
        spec = SpawnSpec.parse(s)
        default = args.gemmaserve_args if spec.kind == "gemmaserve" else args.llama_args
        spec.extra_args = own.pop(spec.name, default).split()
        targets.append(Target(name=spec.name, spec=spec))
    if own:
        raise SystemExit(f"--spawn-args names no --spawn: {sorted(own)}")
    names = [t.name for t in targets]
    for i, t in enumerate(targets):  # unique names: the ratio keys use them
        if names.count(t.name) > 1:
            t.name = f"{t.name}{i}"
    if not targets:
        raise SystemExit("give at least one --endpoint or --spawn")
    return targets


def _vocab(args: argparse.Namespace, targets: list[Target]) -> PromptVocab:
    if args.tokenizer:
        return PromptVocab.from_tokenizer(args.tokenizer, args.bos_id)
    if args.token_range:
        return PromptVocab.from_range(args.token_range, args.bos_id)
    for t in targets:  # a spawned gemmaserve names a checkpoint dir with its tokenizer.json
        if t.spec and t.spec.kind == "gemmaserve" and (Path(t.spec.model) / "tokenizer.json").exists():
            return PromptVocab.from_tokenizer(t.spec.model, args.bos_id)
    raise SystemExit("need --tokenizer DIR or --token-range LO:HI to draw prompt tokens from")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", action="append", default=[], help="NAME=BASE_URL (repeatable)")
    p.add_argument("--spawn", action="append", default=[],
                   help="[NAME=]gemmaserve:MODEL_DIR or [NAME=]llama:GGUF[:NP] (repeatable)")
    p.add_argument("--gemmaserve-args", default="", help="extra args for spawned `gemmaserve serve`")
    p.add_argument("--llama-args", default="", help="extra args for spawned llama-server")
    p.add_argument("--spawn-args", action="append", default=[],
                   help="NAME=ARGS: extra args for the spawned server NAME instead of the per-kind ones (repeatable)")
    p.add_argument("--llama-server", default=str(DEFAULT_LLAMA_SERVER))
    p.add_argument("--model", default=None, help="model field to send (default: first of /v1/models)")
    p.add_argument("--num-prompts", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                   help="requests per run, one per --concurrency value or one for all (default 4x concurrency, >= 8)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1],
                   help="max requests in flight; a comma list runs each")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--prompt-type", choices=("ids", "text"), default="ids")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or a checkpoint dir")
    p.add_argument("--token-range", default=None, help="LO:HI ids to draw from without a tokenizer")
    p.add_argument("--bos-id", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="discarded requests before each concurrency")
    p.add_argument("--repeats", type=int, default=1, help="runs per concurrency; the summary is their median")
    p.add_argument("--percentiles", type=lambda s: [float(x) for x in s.split(",")], default=[50.0, 90.0, 99.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="threads for spawned servers")
    p.add_argument("--extra-body", default=None, help="JSON merged into every request body")
    p.add_argument("--request-timeout", type=float, default=1800.0)
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--log-dir", default="benchmarks/out/logs")
    p.add_argument("--output", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.input_len < 2 or args.output_len < 1:
        p.error("--input-len must be >= 2 (BOS + one token) and --output-len >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
