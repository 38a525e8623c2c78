"""Offline benchmark: the same random prompts through gemmaserve's LLM and transformers' generate,
in one run, with ratios (prefill tok/s, single-stream decode tok/s, batched decode tok/s).

    python -m benchmarks.throughput --model .bench-model --input-len 512 --output-len 128 --batch-sizes 8

Timing, identical for both engines (greedy, eos ignored, fresh prompts for every timed call so a
prefix cache cannot help):
  prefill      = P / t(1 prompt, 1 new token)
  decode       = (O - 1) / (t(1 prompt, O new) - t(1 prompt, 1 new))
  decode xB    = B * (O - 1) / (t(B prompts, O new) - t(B prompts, 1 new))
Each is the median over --repeats timed calls, after one untimed warm-up call.
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
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.prompts import PromptVocab  # noqa: E402

# A generate function: (prompts [B][P] token ids, new tokens) -> seconds taken.
GenerateFn = Callable[[list[list[int]], int], float]


def gemmaserve_runner(model: str, threads: int, llm_kwargs: dict[str, Any]) -> tuple[GenerateFn, Callable[[], None]]:
    import torch

    from gemmaserve.engine.llm import LLM
    from gemmaserve.types import SamplingParams

    torch.set_num_threads(threads)
    llm = LLM(model=model, dtype="bfloat16", device="cpu", **llm_kwargs)

    def run(prompts: list[list[int]], new_tokens: int) -> float:
        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        dt = time.perf_counter() - t0
        got = [len(o.token_ids) for o in outs]
        if got != [new_tokens] * len(prompts):
            raise RuntimeError(f"gemmaserve generated {got} tokens, wanted {new_tokens} each")
        return dt

    def close() -> None:
        nonlocal llm
        shutdown = getattr(llm, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm

    return run, close


def transformers_runner(model: str, threads: int, experts_impl: str | None) -> tuple[GenerateFn, Callable[[], None]]:
    import torch
    from transformers import Gemma4ForConditionalGeneration

    torch.set_num_threads(threads)
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    if experts_impl:
        kwargs["experts_implementation"] = experts_impl
    hf = Gemma4ForConditionalGeneration.from_pretrained(model, **kwargs).eval()

    def run(prompts: list[list[int]], new_tokens: int) -> float:
        ids = torch.tensor(prompts)  # [B, P]; equal lengths, so no padding
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, use_cache=True,
            )  # fmt: skip
        dt = time.perf_counter() - t0
        if out.shape[1] != ids.shape[1] + new_tokens:
            raise RuntimeError(f"transformers generated {out.shape[1] - ids.shape[1]} tokens, wanted {new_tokens}")
        return dt

    def close() -> None:
        nonlocal hf
        del hf

    return run, close


def measure(run: GenerateFn, vocab: PromptVocab, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """All metrics of one engine. Seeds differ per call (fresh prompts), but are the same for
    every engine, so both see exactly the same prompts."""
    P, O, R = args.input_len, args.output_len, args.repeats
    counter = iter(range(10**6))

    def fresh(b: int) -> list[list[int]]:
        return vocab.prompts(b, P, seed=seed + next(counter))

    run(vocab.prompts(1, min(P, 32), seed=seed - 1), 2)  # warm-up: allocation, first-call paths
    out: dict[str, Any] = {}
    t_pre = [run(fresh(1), 1) for _ in range(R)]
    t_full = [run(fresh(1), O) for _ in range(R)]
    pre = statistics.median(t_pre)
    out["prefill_tok_s"] = P / pre
    out["decode_tok_s"] = (O - 1) / (statistics.median(t_full) - pre)
    out["prefill_s"] = t_pre
    out["decode_call_s"] = t_full
    for b in args.batch_sizes:
        tb_pre = [run(fresh(b), 1) for _ in range(R)]
        tb_full = [run(fresh(b), O) for _ in range(R)]
        out[f"decode_x{b}_tok_s"] = b * (O - 1) / (statistics.median(tb_full) - statistics.median(tb_pre))
        out[f"batch{b}_prefill_s"] = tb_pre
        out[f"batch{b}_call_s"] = tb_full
    return out


HEADLINES = ("prefill_tok_s", "decode_tok_s")


def with_ratios(results: dict[str, dict[str, Any]], batch_sizes: Sequence[int]) -> dict[str, float]:
    """gemmaserve / transformers for every headline number both engines produced."""
    a, b = results.get("gemmaserve"), results.get("transformers")
    if not a or not b:
        return {}
    keys = list(HEADLINES) + [f"decode_x{bs}_tok_s" for bs in batch_sizes]
    return {k: a[k] / b[k] for k in keys if k in a and k in b and b[k]}


def measure_gemmaserve_decode(model: str, input_len: int, output_len: int, threads: int, repeats: int = 3) -> float:
    """Single-stream decode tok/s of gemmaserve alone (the roofline script's --measure)."""
    args = argparse.Namespace(input_len=input_len, output_len=output_len, repeats=repeats, batch_sizes=[])
    run, close = gemmaserve_runner(model, threads, {})
    try:
        return measure(run, PromptVocab.from_tokenizer(model, 2), args, seed=0)["decode_tok_s"]
    finally:
        close()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint dir (both engines load it)")
    p.add_argument("--engines", default="gemmaserve,transformers", help="comma list, run in this order")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bos-id", type=int, default=2)
    p.add_argument("--llm-kwargs", default="{}", help="JSON of extra gemmaserve LLM(...) kwargs")
    p.add_argument("--hf-experts-impl", default=None, help="transformers experts_implementation")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    if args.input_len < 2 or args.output_len < 2:
        p.error("--input-len and --output-len must be >= 2")
    vocab = PromptVocab.from_tokenizer(args.model, args.bos_id)
    results: dict[str, dict[str, Any]] = {}
    for name in args.engines.split(","):
        if name == "gemmaserve":
            run, close = gemmaserve_runner(args.model, args.threads, json.loads(args.llm_kwargs))
        elif name == "transformers":
            run, close = transformers_runner(args.model, args.threads, args.hf_experts_impl)
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
        "config": {"model": args.model, "input_len": args.input_len, "output_len": args.output_len,
                   "batch_sizes": args.batch_sizes, "repeats": args.repeats, "threads": args.threads,
                   "dtype": "bfloat16", "torch": torch.__version__,
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "results": results,
        "ratios_gemmaserve_over_transformers": with_ratios(results, args.batch_sizes),
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
