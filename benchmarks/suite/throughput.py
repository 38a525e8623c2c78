"""Offline benchmark: the same random prompts through gemmaserve's LLM engine and transformers'
generate, in one run, with ratios (prefill tok/s, single-stream decode tok/s, batched decode tok/s).

    python -m benchmarks.suite.throughput --model .bench-model --input-len 512 --output-len 128 --batch-sizes 8

Both engines run greedy with eos ignored and stamp every generated token as it appears
(gemmaserve: the outputs of each Engine.step(), which is what LLM.generate loops over;
transformers: a generate() streamer, called once per decoding step), so one call gives both
phases and nothing is inferred by subtracting separate runs:
  prefill     = P / (first token - call start)                          one P-token prompt
  decode      = (O - 1) / (last token - first token)                    the same call
  decode xB   = tokens after t0 / (last token - t0), t0 = the moment   B prompts at once
                the last of the B requests got its first token (steady-state decode only)
Each is the median over --repeats calls (fresh prompts every call, identical for both engines,
so a prefix cache cannot help), after untimed warm-up calls at the measured shapes.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.machine import machine  # noqa: E402
from benchmarks.suite.prompts import PromptVocab  # noqa: E402

# (prompts [B][P] token ids, new tokens) -> (call start, per prompt the arrival time of every token).
GenerateFn = Callable[[list[list[int]], int], tuple[float, list[list[float]]]]


def gemmaserve_runner(
    model: str, threads: int, llm_kwargs: dict[str, Any], device: str = "cpu"
) -> tuple[GenerateFn, Callable[[], None]]:
    import torch

    from gemmaserve.engine.llm import LLM
    from gemmaserve.types import SamplingParams

    torch.set_num_threads(threads)
    llm = LLM(model=model, dtype="bfloat16", device=device, **llm_kwargs)
    engine = llm.engine
    counter = iter(range(10**9))

    def run(prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[float]]]:
        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        rids = [f"bench-{next(counter)}" for _ in prompts]
        times: dict[str, list[float]] = {r: [] for r in rids}
        done: set[str] = set()
        t0 = time.perf_counter()
        # The same add_request/step loop as LLM.generate, with a timestamp per output.
        for rid, p in zip(rids, prompts):
            engine.add_request(rid, p, params)
        while len(done) < len(rids):
            outs = engine.step()
            now = time.perf_counter()
            for o in outs:
                times[o.request_id].extend([now] * len(o.new_token_ids))
                if o.finished:
                    done.add(o.request_id)
        got = [len(times[r]) for r in rids]
        if got != [new_tokens] * len(prompts):
            raise RuntimeError(f"gemmaserve generated {got} tokens, wanted {new_tokens} each")
        return t0, [times[r] for r in rids]

    def close() -> None:
        nonlocal llm, engine
        del llm, engine

    return run, close


def transformers_runner(
    model: str, threads: int, experts_impl: str | None, device: str = "cpu", dummy_weights: bool = False
) -> tuple[GenerateFn, Callable[[], None]]:
    import torch
    from transformers import AutoConfig, Gemma4ForConditionalGeneration
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    if experts_impl:
        kwargs["experts_implementation"] = experts_impl
    if dummy_weights:  # config only (e.g. the 26B-A4B shape on a GPU): random init on the device
        with torch.device(device):
            hf = Gemma4ForConditionalGeneration._from_config(AutoConfig.from_pretrained(model), **kwargs)
    else:
        hf = Gemma4ForConditionalGeneration.from_pretrained(model, **kwargs).to(device)
    hf = hf.eval()

    class Stamps(BaseStreamer):
        """generate() puts the prompt first, then each step's [B] new tokens: stamp the steps."""

        def __init__(self) -> None:
            self.calls: list[float] = []

        def put(self, value: Any) -> None:
            self.calls.append(time.perf_counter())

        def end(self) -> None:
            pass

    def run(prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[float]]]:
        ids = torch.tensor(prompts, device=device)  # [B, P]; equal lengths, so no padding
        stamps = Stamps()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, use_cache=True, streamer=stamps,
            )  # fmt: skip
        steps = stamps.calls[1:]  # [0] is the prompt
        if out.shape[1] != ids.shape[1] + new_tokens or len(steps) != new_tokens:
            raise RuntimeError(f"transformers generated {out.shape[1] - ids.shape[1]} tokens, wanted {new_tokens}")
        return t0, [list(steps) for _ in prompts]

    def close() -> None:
        nonlocal hf
        del hf

    return run, close


def phase_rates(t0: float, times: list[list[float]], prompt_len: int) -> dict[str, float]:
    """prefill / decode rates of one call from its token timestamps (see the module docstring)."""
    first = [ts[0] for ts in times]
    out = {"ttft_s": max(first) - t0}
    if len(times) == 1:
        ts = times[0]
        out["prefill_tok_s"] = prompt_len / (ts[0] - t0)
        if len(ts) > 1:
            out["decode_tok_s"] = (len(ts) - 1) / (ts[-1] - ts[0])
        return out
    t_start = max(first)
    t_end = max(ts[-1] for ts in times)
    after = sum(1 for ts in times for t in ts if t > t_start)
    out["decode_tok_s"] = after / (t_end - t_start) if t_end > t_start else float("nan")
    return out


def measure(run: GenerateFn, vocab: PromptVocab, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """All metrics of one engine. Seeds differ per call (fresh prompts) but are the same for
    every engine, so both see exactly the same prompts."""
    P, O, R = args.input_len, args.output_len, args.repeats
    counter = iter(range(10**6))

    def fresh(b: int) -> list[list[int]]:
        return vocab.prompts(b, P, seed=seed + next(counter))

    # Warm-up at the measured shapes: allocator growth, first-call paths, thread pools.
    run(vocab.prompts(1, P, seed=seed - 1), 4)
    for b in args.batch_sizes:
        run(vocab.prompts(b, P, seed=seed - 2 - b), 4)
    single = [phase_rates(*run(fresh(1), O), P) for _ in range(R)]
    out: dict[str, Any] = {
        "prefill_tok_s": statistics.median(r["prefill_tok_s"] for r in single),
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in single),
        "single_runs": single,
    }
    for b in args.batch_sizes:
        batch = [phase_rates(*run(fresh(b), O), P) for _ in range(R)]
        out[f"decode_x{b}_tok_s"] = statistics.median(r["decode_tok_s"] for r in batch)
        out[f"batch{b}_runs"] = batch
    return out


HEADLINES = ("prefill_tok_s", "decode_tok_s")


def with_ratios(results: dict[str, dict[str, Any]], batch_sizes: Sequence[int], num: str = "gemmaserve",
                den: str = "transformers") -> dict[str, float]:
    """num / den (default gemmaserve / transformers) for every headline number both engines produced."""
    a, b = results.get(num), results.get(den)
    if not a or not b:
        return {}
    keys = list(HEADLINES) + [f"decode_x{bs}_tok_s" for bs in batch_sizes]
    return {k: a[k] / b[k] for k in keys if k in a and k in b and b[k]}


def measure_gemmaserve_decode(
    model: str, input_len: int, output_len: int, threads: int, repeats: int = 3, device: str = "cpu"
) -> float:
    """Single-stream decode tok/s of gemmaserve alone (the roofline script's --measure)."""
    args = argparse.Namespace(input_len=input_len, output_len=output_len, repeats=repeats, batch_sizes=[])
    run, close = gemmaserve_runner(model, threads, {}, device)
    try:
        return measure(run, PromptVocab.from_tokenizer(model, 2), args, seed=0)["decode_tok_s"]
    finally:
        close()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint dir (both engines load it)")
    p.add_argument("--engines", default="gemmaserve,transformers",
                   help="comma list, run in this order (gemmaserve, gemmaserve-det, transformers)")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bos-id", type=int, default=2)
    p.add_argument("--llm-kwargs", default="{}", help="JSON of extra gemmaserve LLM(...) kwargs")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both engines)")
    p.add_argument("--dummy-weights", action="store_true",
                   help="random weights from config.json only (the 26b-a4b demo dir has no weights)")
    p.add_argument("--hf-experts-impl", default=None, help="transformers experts_implementation")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    if args.input_len < 2 or args.output_len < 2:
        p.error("--input-len and --output-len must be >= 2")
    vocab = PromptVocab.from_tokenizer(args.model, args.bos_id)
    results: dict[str, dict[str, Any]] = {}
    for name in args.engines.split(","):
        if name in ("gemmaserve", "gemmaserve-det"):
            # gemmaserve-det: the same engine in deterministic (batch-invariant) mode, for its cost.
            kw = json.loads(args.llm_kwargs) | ({"dummy_weights": True} if args.dummy_weights else {})
            kw |= {"deterministic": True} if name == "gemmaserve-det" else {}
            run, close = gemmaserve_runner(args.model, args.threads, kw, args.device)
        elif name == "transformers":
            run, close = transformers_runner(
                args.model, args.threads, args.hf_experts_impl, args.device, args.dummy_weights
            )
        else:
            raise SystemExit(f"unknown engine {name!r}")
        try:
            results[name] = measure(run, vocab, args, seed=args.seed * 1_000_003 + 17)
        finally:
            close()
            gc.collect()
        print(f"[throughput] {name}: " + json.dumps({k: round(v, 1) for k, v in results[name].items()
                                                     if k.endswith("tok_s")}), file=sys.stderr, flush=True)
    import torch

    report = {
        "benchmark": "throughput",
        "machine": machine(),
        "config": {"model": args.model, "input_len": args.input_len, "output_len": args.output_len,
                   "batch_sizes": args.batch_sizes, "repeats": args.repeats, "threads": args.threads,
                   "dtype": "bfloat16", "device": args.device, "dummy_weights": args.dummy_weights,
                   "torch": torch.__version__,
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "results": results,
        "ratios_gemmaserve_over_transformers": with_ratios(results, args.batch_sizes),
        "ratios_deterministic_over_gemmaserve": with_ratios(results, args.batch_sizes, "gemmaserve-det", "gemmaserve"),
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
