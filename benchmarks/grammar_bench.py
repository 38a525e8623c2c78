"""Grammar-library benchmark (llguidance, xgrammar): setup, compile and per-token mask cost; one JSON summary.

Runs whichever libraries import. xgrammar pulls ~1 GB of triton as a dependency, so it lives in
its own venv (see docs/structured-output.md); run this file with that venv's python and
PYTHONPATH=<repo> to compare both. Fixed seeds; the "model" draws random logits each step (with a
bias towards closing tokens, so strings end) and samples from the masked logits.

    python benchmarks/grammar_bench.py [--vocab 32768] [--tokenizer trained|demo] [--seqs 8]
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata as md
import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gemmaserve.demo_tokenizer import CONTROL_TOKENS, build_demo_tokenizer

NESTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "active": {"type": "boolean"},
        "score": {"type": "number"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "geo": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                    "required": ["lat", "lon"],
                    "additionalProperties": False,
                },
            },
            "required": ["city", "geo"],
            "additionalProperties": False,
        },
        "orders": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}, "note": {"type": ["string", "null"]}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
            "maxItems": 3,
        },
    },
    "required": ["id", "name", "active", "role", "address", "orders"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer"}},
        "required": ["city"]}}},
]
END_IDS = (1, 106, 50)


# -- tokenizers ---------------------------------------------------------------------------------
def trained_tokenizer(vocab: int):
    """A Gemma-like byte-fallback BPE with the control tokens at their ids, trained on the Python
    standard library's sources (a few MB of real text: every id is a real piece, unlike the demo
    tokenizer whose small corpus leaves most of a 32k vocab as <unused> fillers)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    fixed = {i: CONTROL_TOKENS.get(i, f"<unused{i}>") for i in range(107)}
    files = sorted(glob.glob(str(Path(sysconfig.get_paths()["stdlib"]) / "**" / "*.py"), recursive=True))
    corpus, size = [], 0
    for f in files:
        if size > 6_000_000:
            break
        text = Path(f).read_text(encoding="utf-8", errors="replace")
        corpus.append(text)
        size += len(text)
    tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [fixed[i] for i in range(107)] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    data = json.loads(tok.to_str())
    # Byte tokens are vocabulary entries for byte fallback, not added tokens matched in text.
    data["added_tokens"] = [a for a in data["added_tokens"] if not a["content"].startswith("<0x")]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(fixed[i], special=True, normalized=False) for i in CONTROL_TOKENS])
    return tok


def closing_ids(hf) -> list[int]:
    ids = [52]
    for i in range(hf.get_vocab_size()):
        text = hf.decode([i])
        if i > 106 and any(c in text for c in '"}]'):
            ids.append(i)
    return ids


# -- measurement helpers ------------------------------------------------------------------------
def stats_us(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1e6  # noqa: E731
    return {"n": len(s), "median_us": round(statistics.median(s) * 1e6, 1), "p90_us": round(pick(0.9), 1),
            "p99_us": round(pick(0.99), 1), "max_us": round(s[-1] * 1e6, 1)}


def footprint_mb(dists: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in dists:
        try:
            files = md.distribution(name).files or []
            out[name] = round(sum(f.locate().stat().st_size for f in files if f.locate().exists()) / 2**20, 1)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def drive(step_mask: Callable[[list[int], torch.Tensor], float], accept: Callable[[int], None],
          width: int, bias_ids: list[int], seed: int, max_tokens: int) -> tuple[list[int], list[float]]:
    """Random model loop: returns (ids, per-step mask seconds)."""
    gen = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    times: list[float] = []
    while len(ids) < max_tokens:
        logits = torch.randn(width, generator=gen) * 2.0  # [V]
        logits[bias_ids] += 4.0
        times.append(step_mask(ids, logits))
        tid = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        accept(tid)
        ids.append(tid)
        if tid in END_IDS:
            break
    return ids, times


# -- llguidance (through gemmaserve.structured) -------------------------------------------------
def bench_llguidance(hf, args, bias: list[int]) -> dict[str, Any]:
    from gemmaserve.structured import GrammarCompiler, json_schema_constraint, tool_call_constraint

    t0 = time.perf_counter()
    compiler = GrammarCompiler(hf)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    json_schema_constraint(compiler, NESTED_SCHEMA, strict=True)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    json_schema_constraint(compiler, NESTED_SCHEMA, strict=True)
    cached_s = time.perf_counter() - t0
    times, valid, lengths = [], 0, []
    for seed in range(args.seqs):
        c = json_schema_constraint(compiler, NESTED_SCHEMA, strict=True)

        def step(ids, logits, c=c):
            t = time.perf_counter()
            c.mask_logits(ids, logits)
            return time.perf_counter() - t

        ids, ts = drive(step, lambda _t: None, hf.get_vocab_size(), bias, seed, args.max_tokens)
        times += ts
        lengths.append(len(ids))
        valid += _json_ok(hf, ids)
    # The bitmask fill alone (what xgrammar's fill_next_token_bitmask does), without our apply.
    from gemmaserve.structured.json_grammar import json_schema_lark

    grammar = json_schema_lark(NESTED_SCHEMA, strict=True, end_ids=(106, 1))
    bits = torch.zeros((hf.get_vocab_size() + 31) // 32, dtype=torch.int32)
    fill_times: list[float] = []
    for seed in range(args.seqs):
        m = compiler.matcher(grammar)

        def fill(ids, logits, m=m):
            t = time.perf_counter()
            m.unsafe_compute_mask_ptr(bits.data_ptr(), bits.numel() * 4)
            dt = time.perf_counter() - t
            allowed = np.unpackbits(bits.numpy().view(np.uint8), bitorder="little")[: logits.shape[0]]
            logits.masked_fill_(torch.from_numpy(allowed == 0), float("-inf"))
            return dt

        _, ts = drive(fill, lambda t, m=m: m.consume_token(t), hf.get_vocab_size(), bias, seed, args.max_tokens)
        fill_times += ts
    tool_ok = 0
    for seed in range(args.seqs):
        c = tool_call_constraint(compiler, TOOLS, "required", parallel=False)
        ids, _ = drive(lambda i, lg, c=c: c.mask_logits(i, lg) or 0.0, lambda _t: None,
                       hf.get_vocab_size(), bias, seed, args.max_tokens)
        text = hf.decode(ids[:-1], skip_special_tokens=False)
        tool_ok += ids[0] == 48 and text.startswith("<|tool_call>call:get_weather{") and text.endswith("}<tool_call|>")
    return {"version": md.version("llguidance"), "footprint_mb": footprint_mb(["llguidance"]),
            "tokenizer_setup_ms": round(setup * 1e3, 1), "json_compile_ms": round(compile_s * 1e3, 1),
            "json_compile_cached_ms": round(cached_s * 1e3, 2),
            "mask_per_token_incl_apply": stats_us(times), "mask_fill_only": stats_us(fill_times),
            "json_valid": f"{valid}/{args.seqs}", "tokens_per_seq": lengths,
            "gemma_tool_call_special_tokens": f"forced by id (<[48]>, <[52]>); {tool_ok}/{args.seqs} random calls well-formed"}


# -- xgrammar -----------------------------------------------------------------------------------
def bench_xgrammar(hf, args, bias: list[int]) -> dict[str, Any]:
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    vocab = hf.get_vocab_size()
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_object=hf), vocab_size=vocab,
                                              stop_token_ids=list(END_IDS))
    compiler = xgr.GrammarCompiler(info, max_threads=2)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(NESTED_SCHEMA), any_whitespace=True)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiler.compile_json_schema(json.dumps(NESTED_SCHEMA), any_whitespace=True)
    cached_s = time.perf_counter() - t0
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    times, fill_times, valid, lengths = [], [], 0, []
    for seed in range(args.seqs):
        m = xgr.GrammarMatcher(compiled)

        def step(ids, logits, m=m):
            t = time.perf_counter()
            m.fill_next_token_bitmask(bitmask)
            fill_times.append(time.perf_counter() - t)
            xgr.apply_token_bitmask_inplace(logits.view(1, -1), bitmask)
            return time.perf_counter() - t

        ids, ts = drive(step, lambda t, m=m: m.accept_token(t), vocab, bias, seed, args.max_tokens)
        times += ts
        lengths.append(len(ids))
        valid += _json_ok(hf, ids)
    # Gemma tool calls need the special tokens <|tool_call> (48) / <|"|> (52) inside the grammar.
    ebnf = 'root ::= "<|tool_call>" "call:get_weather{city:" "<|\\"|>" [a-z]+ "<|\\"|>" "}" "<tool_call|>"'
    try:
        m = xgr.GrammarMatcher(compiler.compile_grammar(ebnf))
        m.fill_next_token_bitmask(bitmask)
        allowed = [i for i in range(vocab) if (int(bitmask[0, i // 32]) >> (i % 32)) & 1]
        texty = [i for i in allowed if i != 48]
        special = (f"a text literal matches by decoded text: first mask allows id 48: {48 in allowed}, "
                   f"plus {len(texty)} ordinary tokens that spell the marker (e.g. {hf.decode(texty[:3])!r})")
    except Exception as exc:  # noqa: BLE001 - any failure is the answer here
        special = f"error: {exc}"
    return {"version": md.version("xgrammar"),
            "footprint_mb": footprint_mb(["xgrammar", "apache-tvm-ffi", "transformers", "pydantic", "triton"]),
            "tokenizer_setup_ms": round(setup * 1e3, 1), "json_compile_ms": round(compile_s * 1e3, 1),
            "json_compile_cached_ms": round(cached_s * 1e3, 2),
            "mask_per_token_incl_apply": stats_us(times), "mask_fill_only": stats_us(fill_times),
            "json_valid": f"{valid}/{args.seqs}", "tokens_per_seq": lengths,
            "gemma_tool_call_special_tokens": special}


def _json_ok(hf, ids: list[int]) -> int:
    try:
        return int(ids[-1] in END_IDS and isinstance(json.loads(hf.decode(ids[:-1], skip_special_tokens=False)), dict))
    except ValueError:
        return 0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--tokenizer", choices=["trained", "demo"], default="trained")
    p.add_argument("--seqs", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=3000)
    p.add_argument("--libs", default="llguidance,xgrammar")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    hf = trained_tokenizer(args.vocab) if args.tokenizer == "trained" else build_demo_tokenizer(args.vocab)
    hf.post_processor = None
    summary: dict[str, Any] = {"tokenizer": args.tokenizer, "vocab": hf.get_vocab_size(),
                               "tokenizer_build_s": round(time.perf_counter() - t0, 1),
                               "threads": torch.get_num_threads(), "python": sys.version.split()[0]}
    bias = closing_ids(hf)
    for lib, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
        if lib not in args.libs.split(","):
            continue
        try:
            __import__(lib)
        except ImportError:
            summary[lib] = "not installed"
            continue
        summary[lib] = fn(hf, args, bias)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
