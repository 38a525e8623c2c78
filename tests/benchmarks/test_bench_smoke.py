"""Smoke tests of the benchmark tooling: statistics, roofline byte counts, the SSE client, arg parsing."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import pytest

from benchmarks.suite import serving
from benchmarks.suite.prompts import PromptVocab
from benchmarks.suite.roofline import active_bytes, active_params, report, total_params
from benchmarks.suite.spawn import SpawnSpec, llama_argv
from benchmarks.suite.stats import (
    RequestRecord,
    distribution,
    median_summary,
    percentile,
    ratios,
    summarize,
)
from benchmarks.suite.throughput import phase_rates, with_ratios
from gemmaserve.model.config import Gemma4TextConfig

# The real google/gemma-4-26B-A4B-it text_config (spec §2.2).
CFG_26B = {
    "model_type": "gemma4_text", "vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112,
    "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
    "global_head_dim": 512, "num_global_key_value_heads": 2, "attention_k_eq_v": True,
    "sliding_window": 1024, "enable_moe_block": True, "num_experts": 128, "top_k_experts": 8,
    "moe_intermediate_size": 704,
}  # fmt: skip


# -- statistics -------------------------------------------------------------------------------------
def test_percentile_interpolates_like_numpy():
    xs = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(xs, 0) == 15.0
    assert percentile(xs, 100) == 50.0
    assert percentile(xs, 50) == 35.0
    assert percentile(xs, 40) == pytest.approx(29.0)  # pos 1.6: 20 + 0.6 * 15
    assert percentile(xs, 90) == pytest.approx(46.0)  # pos 3.6: 40 + 0.6 * 10
    assert percentile(list(reversed(xs)), 90) == pytest.approx(46.0)  # order does not matter
    assert percentile([7.0], 99) == 7.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_record_ttft_tpot_itl_from_timestamps():
    rec = RequestRecord(start=10.0, chunk_times=[10.5, 10.7, 11.0, 11.1], end=11.2, output_tokens=4)
    assert rec.ttft == pytest.approx(0.5)
    assert rec.e2el == pytest.approx(1.2)
    assert rec.tpot == pytest.approx((1.2 - 0.5) / 3)  # time after the first token / (n - 1)
    assert rec.itls == pytest.approx([0.2, 0.3, 0.1])
    one = RequestRecord(start=0.0, chunk_times=[0.25], end=0.25, output_tokens=1)
    assert one.tpot is None and one.itls == [] and one.ttft == 0.25
    assert RequestRecord(start=0.0, end=1.0).ttft is None


def test_summarize_exact_values():
    recs = [
        RequestRecord(start=0.0, chunk_times=[0.1, 0.3, 0.5], end=0.5, prompt_tokens=8, output_tokens=3),
        RequestRecord(start=0.0, chunk_times=[0.2, 0.6, 1.0], end=1.0, prompt_tokens=8, output_tokens=3),
        RequestRecord(start=0.0, end=0.1, prompt_tokens=8, success=False, error="HTTP 500: boom"),
    ]
    s = summarize(recs, duration=2.0)
    assert s["completed"] == 2 and s["failed"] == 1 and s["errors"] == ["HTTP 500: boom"]
    assert s["total_input_tokens"] == 16 and s["total_output_tokens"] == 6
    assert s["request_throughput"] == 1.0
    assert s["output_throughput"] == 3.0
    assert s["total_token_throughput"] == 11.0
    assert s["ttft_ms"]["mean"] == pytest.approx(150.0)
    assert s["ttft_ms"]["median"] == pytest.approx(150.0)
    assert s["ttft_ms"]["p90"] == pytest.approx(190.0)
    assert s["ttft_ms"]["std"] == pytest.approx(50.0)
    assert s["tpot_ms"]["mean"] == pytest.approx(300.0)  # (0.4/2 + 0.8/2) / 2
    assert s["itl_ms"]["median"] == pytest.approx(300.0)  # gaps 0.2, 0.2, 0.4, 0.4
    assert s["itl_ms"]["p99"] == pytest.approx(400.0)
    assert s["e2el_ms"]["p50"] == pytest.approx(750.0)
    empty = distribution([], (50.0, 99.9))
    assert empty == {"mean": None, "median": None, "std": None, "p50": None, "p99_9": None}


def test_ratios_and_median_summary():
    a = {"output_throughput": 300.0, "request_throughput": 2.0, "ttft_ms": {"median": 50.0},
         "tpot_ms": {"median": 10.0}, "itl_ms": {"median": None}, "e2el_ms": {"median": 1000.0}}  # fmt: skip
    b = {"output_throughput": 100.0, "request_throughput": 1.0, "ttft_ms": {"median": 100.0},
         "tpot_ms": {"median": 20.0}, "itl_ms": {"median": 5.0}, "e2el_ms": {"median": 0.0}}  # fmt: skip
    r = ratios(a, b)
    assert r == {"output_throughput": 3.0, "request_throughput": 2.0, "ttft_ms.median": 0.5,
                 "tpot_ms.median": 0.5, "itl_ms.median": None, "e2el_ms.median": None}  # fmt: skip
    runs = [{"x": 1.0, "d": {"y": 5}, "errors": ["e"]}, {"x": 9.0, "d": {"y": 1}, "errors": []},
            {"x": 3.0, "d": {"y": 3}, "errors": []}]  # fmt: skip
    assert median_summary(runs) == {"x": 3.0, "d": {"y": 3}, "errors": ["e"]}


# -- roofline ---------------------------------------------------------------------------------------
def test_roofline_26b_active_bytes():
    cfg = Gemma4TextConfig.from_dict(CFG_26B)
    a = active_params(cfg)
    # Shapes from spec §2.4: 25 sliding layers (q 4096, k/v 2048) and 5 full (q 8192, k 1024, no v).
    assert a.attention == 25 * (2816 * (4096 + 2048 + 2048) + 4096 * 2816 + 512) + 5 * (
        2816 * (8192 + 1024) + 8192 * 2816 + 1024
    )
    assert a.attention == 1_110_197_760  # spec §9: 1.110B (+ q/k norm weights)
    assert a.dense_mlp == 30 * 3 * 2816 * 2112 == 535_265_280
    assert a.router == 30 * (128 * 2816 + 2816 + 128) == 10_901_760
    assert a.experts == 30 * 8 * 3 * 2816 * 704 == 1_427_374_080
    assert a.lm_head == 262144 * 2816 and a.embedding_row == 2816
    assert a.norms == 30 * (7 * 2816 + 1) + 2816
    assert a.total == 3_822_533_406  # spec §9: 3.82B active incl. embeddings
    assert total_params(cfg) == 25_233_141_790  # spec §9: text 25.233B
    assert active_bytes(cfg, "bf16") == 2 * 3_822_533_406
    # 1 byte for linear/expert weights + a bf16 scale per output channel; the rest stays bf16.
    channels = 25 * (4096 + 2048 + 2048 + 2816) + 5 * (8192 + 1024 + 2816) + 30 * (2 * 2112 + 2816) + 30 * 8 * (
        2 * 704 + 2816
    )
    rest = a.total - (a.attention + a.dense_mlp + a.experts)
    assert active_bytes(cfg, "int8") == a.attention + a.dense_mlp + a.experts + 2 * channels + 2 * rest
    # KV of a 2048-token context: sliding layers keep their 1024-token window (spec §9.1).
    kv = 25 * 1024 * 8 * 256 * 2 * 2 + 5 * 2048 * 2 * 512 * 2 * 2
    assert active_bytes(cfg, "bf16", context=2048) == 2 * 3_822_533_406 + kv
    r = report(cfg, bandwidth_gb_s=3350.0, decode_tok_s=219.0)
    assert r["decode_limit_tok_s"] == pytest.approx(3350e9 / (2 * 3_822_533_406))  # ~438 on an H100 SXM
    assert round(r["decode_limit_tok_s"]) == 438
    assert r["fraction_of_limit"] == pytest.approx(219.0 / r["decode_limit_tok_s"])


# -- prompts, spawning, throughput ratios -----------------------------------------------------------
def test_prompts_are_deterministic_and_exclude_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<0x41>": 3, "a": 4, "b": 5, "c": 6, "<ctl>": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "<eos>", "<bos>", "<ctl>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    pv = PromptVocab.from_tokenizer(tmp_path, bos_id=2)
    assert pv.ids == [4, 5, 6]  # no added/special tokens, no byte-fallback pieces
    a, b = pv.prompts(3, 6, seed=1), pv.prompts(3, 6, seed=1)
    assert a == b and len(a) == 3
    assert all(p[0] == 2 and len(p) == 6 and set(p[1:]) <= {4, 5, 6} for p in a)
    assert pv.prompts(3, 6, seed=2) != a
    assert PromptVocab.from_range("10:13", bos_id=2).ids == [10, 11, 12]


def test_spawn_spec_parsing_and_llama_argv():
    s = SpawnSpec.parse("llama:/m/bench.gguf:32")
    assert (s.kind, s.model, s.parallel, s.name) == ("llama", "/m/bench.gguf", 32, "llama")
    g = SpawnSpec.parse("ours=gemmaserve:/m/bench")
    assert (g.kind, g.model, g.parallel, g.name) == ("gemmaserve", "/m/bench", 1, "ours")
    with pytest.raises(ValueError):
        SpawnSpec.parse("vllm:/m")
    argv = llama_argv(s, port=9000, ctx_per_slot=704, threads=2, server=Path("/x/llama-server"))
    assert argv[:7] == ["/x/llama-server", "-m", "/m/bench.gguf", "--host", "127.0.0.1", "--port", "9000"]
    assert argv[argv.index("-np") + 1] == "32" and argv[argv.index("-c") + 1] == str(32 * 768)
    assert argv[argv.index("-t") + 1] == "2" and argv[argv.index("-tb") + 1] == "2"


def test_phase_rates_from_token_timestamps():
    one = phase_rates(10.0, [[10.5, 10.6, 10.7, 10.9]], prompt_len=512)
    assert one["prefill_tok_s"] == pytest.approx(1024.0)  # 512 tokens before the first output
    assert one["decode_tok_s"] == pytest.approx(3 / 0.4)  # 3 more tokens over 0.4 s
    assert one["ttft_s"] == pytest.approx(0.5)
    # Two requests; the second gets its first token at 11.0: only tokens after that count.
    two = phase_rates(10.0, [[10.5, 10.8, 11.2, 11.4], [11.0, 11.2, 11.4, 11.6]], prompt_len=512)
    assert two["decode_tok_s"] == pytest.approx(5 / 0.6)  # 11.2, 11.4 + 11.2, 11.4, 11.6 over 11.0..11.6
    assert "prefill_tok_s" not in two and two["ttft_s"] == pytest.approx(1.0)


def test_throughput_ratios():
    res = {"gemmaserve": {"prefill_tok_s": 1500.0, "decode_tok_s": 120.0, "decode_x8_tok_s": 400.0},
           "transformers": {"prefill_tok_s": 1000.0, "decode_tok_s": 30.0, "decode_x8_tok_s": 100.0}}  # fmt: skip
    assert with_ratios(res, [8]) == {"prefill_tok_s": 1.5, "decode_tok_s": 4.0, "decode_x8_tok_s": 4.0}
    assert with_ratios({"gemmaserve": res["gemmaserve"]}, [8]) == {}


# -- the streaming client against a scripted in-memory server ---------------------------------------
def _fake_server(requests_seen: list[dict], llama: bool):
    """An httpx transport that answers like an OpenAI /v1/completions SSE stream: one chunk per
    token (an empty-text chunk in the middle, as a server holding back a partial character
    sends), then a usage chunk and [DONE]."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "google/gemma-4-26b-a4b-it"}]})
        if request.url.path == "/props":
            if llama:
                return httpx.Response(200, json={"default_generation_settings": {}})
            return httpx.Response(404, json={"error": {"code": 404, "message": "not found"}})
        body = json.loads(request.content)
        requests_seen.append(body)
        n = body["max_tokens"]
        lines = [": OPENROUTER PROCESSING", ""]
        for i in range(n):
            text = "" if i == 1 else f"t{i}"
            lines += ["data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}]}), ""]
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n, "total_tokens": len(body["prompt"]) + n}
        lines += ["data: " + json.dumps({"choices": [], "usage": usage}), "", "data: [DONE]", ""]
        return httpx.Response(200, text="\n".join(lines), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("llama", [False, True])
def test_serving_client_streams_counts_and_summarizes(llama, tmp_path):
    seen: list[dict] = []
    args = serving.parse_args(
        ["--endpoint", "x=http://fake", "--token-range", "100:200", "--num-prompts", "5",
         "--concurrency", "2", "--input-len", "16", "--output-len", "4", "--warmup", "1"]
    )  # fmt: skip

    async def go():
        async with httpx.AsyncClient(transport=_fake_server(seen, llama)) as client:
            ep = await serving.discover(client, "x", "http://fake/v1", None)
            res = await serving.bench_endpoint(ep, args, PromptVocab.from_range("100:200", 2), client)
            return ep, res

    ep, res = asyncio.run(go())
    assert ep.base_url == "http://fake" and ep.model == "google/gemma-4-26b-a4b-it" and ep.llama is llama
    assert len(seen) == 6  # 1 warm-up + 5 measured
    body = seen[-1]
    assert body["max_tokens"] == body["min_tokens"] == 4 and body["ignore_eos"] is True and body["stream"]
    assert body["temperature"] == 0.0 and body["model"] == "google/gemma-4-26b-a4b-it"
    assert ("n_predict" in body) is llama and (body.get("n_predict") == 4 if llama else True)
    assert len(body["prompt"]) == 16 and body["prompt"][0] == 2 and all(100 <= t < 200 for t in body["prompt"][1:])
    measured_prompts = [b["prompt"] for b in seen[1:]]
    assert len({tuple(p) for p in measured_prompts}) == 5 and seen[0]["prompt"] not in measured_prompts
    (row,) = res
    s = row["summary"]
    assert row["concurrency"] == 2 and row["num_prompts"] == 5
    assert s["completed"] == 5 and s["failed"] == 0 and s["output_len_mismatch"] == 0
    assert s["total_output_tokens"] == 20 and s["total_input_tokens"] == 80
    assert s["ttft_ms"]["median"] >= 0 and s["tpot_ms"]["median"] >= 0
    assert not math.isnan(s["itl_ms"]["p99"])  # 3 text chunks per request -> 2 gaps each


def test_serving_client_records_http_errors():
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {"code": 429, "message": "queue full"}})

    ep = serving.Endpoint(name="x", base_url="http://fake", model="m", llama=False)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await serving.stream_one(client, ep, serving.request_body(ep, [2, 5], 3, {}), 2)

    rec = asyncio.run(go())
    assert rec.success is False and rec.error.startswith("RuntimeError: HTTP 429") and "queue full" in rec.error


def test_compare_ratios_against_first_endpoint():
    mk = lambda name, c, thr: {"endpoint": name, "concurrency": c, "summary": {"output_throughput": thr}}  # noqa: E731
    out = serving.compare([mk("a", 1, 10.0), mk("b", 1, 25.0), mk("a", 32, 100.0), mk("b", 32, 50.0)])
    assert out["1"]["b/a"]["output_throughput"] == 2.5
    assert out["32"]["b/a"]["output_throughput"] == 0.5
    assert out["1"]["b/a"]["ttft_ms.median"] is None


# -- report -----------------------------------------------------------------------------------------
def test_report_parses_llama_tools_and_judges_targets(tmp_path):
    from benchmarks.suite.report import llama_offline, render, verdict

    bench = [{"n_prompt": 512, "n_gen": 0, "avg_ts": 600.0, "samples_ts": [650.0, 640.0, 700.0]},
             {"n_prompt": 0, "n_gen": 128, "avg_ts": 100.0, "samples_ts": [101.0, 99.0, 104.0]}]  # fmt: skip
    batched = [{"pl": 1, "speed_tg": 98.0}, {"pl": 8, "speed_tg": 180.5}]
    assert llama_offline(bench, batched) == {"prefill_tok_s": 650.0, "decode_tok_s": 101.0,
                                             "decode_x8_tok_s": 180.5, "batched_bench_decode_x1_tok_s": 98.0}  # fmt: skip
    assert verdict(210.0, 200.0) == "MET (1.05x of target)"
    assert verdict(150.0, 200.0) == "MISSED (0.75x of target)"
    assert verdict(900.0, 600.0, higher_is_better=False) == "MISSED (1.50x of target)"
    assert verdict(None, 1.0) == "not measured"
    (tmp_path / "llama_bench.json").write_text(json.dumps(bench))
    (tmp_path / "throughput.json").write_text(json.dumps({"results": {
        "gemmaserve": {"prefill_tok_s": 1400.0, "decode_tok_s": 120.0, "decode_x8_tok_s": 400.0},
        "transformers": {"prefill_tok_s": 1350.0, "decode_tok_s": 30.0, "decode_x8_tok_s": 105.0}}}))  # fmt: skip
    md = render(tmp_path)
    assert "| gemmaserve `LLM` | 1,400 tok/s | 120 tok/s | 400 tok/s |" in md
    assert "| llama.cpp (bf16 GGUF) | 650 tok/s | 101 tok/s | n/a tok/s |" in md
    assert "| decode 1 stream >= llama.cpp | 120.0 vs target 101.0 | MET (1.19x of target) |" in md
    assert "| decode 1 stream >= 3x transformers | 120.0 vs target 90.0 | MET (1.33x of target) |" in md
    assert "| prefill 512 >= transformers | 1,400.0 vs target 1,350.0 | MET (1.04x of target) |" in md
    assert "| TTFT p50 at 16 streams <= 2x 1-stream TTFT | n/a vs target n/a | not measured |" in md
