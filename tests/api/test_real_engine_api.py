"""The HTTP API over the real AsyncEngine on the tiny demo model: text, JSON mode, forced tool
calls, streaming parity and disconnect freeing KV blocks."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest
from api_support import real_engine_server

MODEL = "google/gemma-4-26b-a4b-it"
MSGS = [{"role": "user", "content": "Tell me about the sea."}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    # Bounded values: a random-weight model would otherwise ramble inside a string until max_tokens.
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                     "days": {"type": "integer", "enum": [1, 2, 3]}},
    "required": ["city", "days"]}}}]


@pytest.fixture(scope="module")
def real(demo_dir):
    with real_engine_server(demo_dir, keepalive_interval_s=0.5) as srv:
        srv.client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
        yield srv


def test_greedy_whole_and_stream_agree(real):
    kw = dict(model=MODEL, messages=MSGS, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    whole = real.client.chat.completions.create(**kw)
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    chunks = list(real.client.chat.completions.create(stream=True, **kw))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 12
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    m = whole.choices[0].message
    streamed = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert streamed == (m.content or "")
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices)
    assert reasoning == (getattr(m, "reasoning", None) or "")


def test_json_object_output_parses(real):
    resp = real.client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=200, seed=3,
                                               response_format={"type": "json_object"})
    assert resp.choices[0].finish_reason == "stop", resp.choices[0].message.content
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_json_schema_output_validates(real):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "ok": {"type": "boolean"}},
              "required": ["name", "ok"], "additionalProperties": False}
    resp = real.client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=200, seed=5, response_format={
        "type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}})
    obj = json.loads(resp.choices[0].message.content)
    assert set(obj) == {"name", "ok"} and isinstance(obj["ok"], bool) and isinstance(obj["name"], str)


def test_required_tool_call_is_well_formed(real):
    resp = real.client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=200, seed=1, tools=TOOLS,
                                               tool_choice="required", parallel_tool_calls=False)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and args["city"] in ("Paris", "Rome") and args["days"] in (1, 2, 3)


def test_disconnect_frees_kv_blocks(real):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", real.url + "/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        deadline = time.monotonic() + 10
        while real.engine.stats().kv_usage == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert real.engine.stats().kv_usage > 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = real.engine.stats()
        if s.kv_usage == 0 and s.num_running == 0 and s.num_waiting == 0:
            break
        time.sleep(0.02)
    s = real.engine.stats()
    assert (s.kv_usage, s.num_running, s.num_waiting) == (0, 0, 0)


def test_legacy_completion_token_prompt(real):
    resp = real.client.completions.create(model=MODEL, prompt=[2, 300, 301, 302], max_tokens=5, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert resp.usage.prompt_tokens == 4 and resp.usage.completion_tokens == 5
    assert resp.choices[0].finish_reason == "length"


def test_legacy_completion_json_mode_on_token_ids_with_top_a(real):
    # A token-id prompt, a JSON schema and top_a together on the real engine: the text validates.
    ids = [real.engine.tokenizer.bos_token_id] + real.engine.tokenizer.encode("Answer in JSON:")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "enum": [1, 2]}},
              "required": ["ok", "n"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "strict": True, "schema": schema}}
    for seed in (1, 2):
        resp = real.client.completions.create(model=MODEL, prompt=ids, max_tokens=200, seed=seed, extra_body={
            "response_format": fmt, "top_a": 0.05, "min_tokens": 2})
        choice = resp.choices[0]
        assert choice.finish_reason == "stop", choice.text
        obj = json.loads(choice.text)
        assert set(obj) == {"ok", "n"} and isinstance(obj["ok"], bool) and obj["n"] in (1, 2)
        assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens >= 2


def test_grammar_response_format_on_both_endpoints(real):
    # OpenRouter's grammar extension: a GBNF grammar bounds the answer exactly, on chat and legacy.
    fmt = {"type": "grammar", "grammar": 'root ::= ("yes" | "no") ", " [1-9]'}
    chat = real.client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=40, seed=4,
                                               response_format=fmt)
    assert chat.choices[0].finish_reason == "stop"
    assert re.fullmatch(r"(yes|no), [1-9]", chat.choices[0].message.content)
    legacy = real.client.completions.create(model=MODEL, prompt="Q:", max_tokens=40, seed=4,
                                            extra_body={"response_format": fmt})
    assert re.fullmatch(r"(yes|no), [1-9]", legacy.choices[0].text) and legacy.choices[0].finish_reason == "stop"


def test_strict_tool_in_auto_mode_calls_validate(real):
    # tool_choice auto: the random model may answer or call; any call of the strict tool validates.
    tools = [{"type": "function", "function": {**TOOLS[0]["function"], "strict": True}}]
    seen = set()
    for seed in range(4):
        # <|tool_call> (id 48) biased up: lean to calling; one call, so the turn ends after it.
        resp = real.client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=120, seed=seed, tools=tools,
                                                   parallel_tool_calls=False, logit_bias={"48": 8})
        choice = resp.choices[0]
        for call in choice.message.tool_calls or []:
            args = json.loads(call.function.arguments)
            assert call.function.name == "get_weather" and args["city"] in ("Paris", "Rome") and args["days"] in (1, 2, 3)
            seen.add(choice.finish_reason)
    assert "tool_calls" in seen


def test_legacy_echo_logprobs_score_the_prompt(real):
    # lm-eval's loglikelihood call: echo + logprobs + max_tokens 0 returns the prompt with one entry
    # per prompt token (the first null), equal to the engine's own prompt logprobs; with tokens to
    # generate the completion's entries follow, and a stream sends the same prompt entries first.
    from gemmaserve.types import SamplingParams

    tok = real.state.tokenizer
    prompt = "The sea is deep"
    ids = [tok.bos_token_id] + tok.encode(prompt)
    scored = real.client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    choice = scored.choices[0]
    assert choice.text == prompt and choice.finish_reason == "length" and scored.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.tokens == [tok.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset[0] == lp.text_offset[1] == 0  # <bos> is not in the echoed text
    assert "".join(lp.tokens[1:]) == prompt

    async def engine_scores():
        params = SamplingParams(max_tokens=0, prompt_logprobs=2)
        async for out in real.engine.generate(ids, params, "direct-score"):
            last = out
        return last.prompt_logprobs

    import asyncio

    direct = asyncio.run(engine_scores())
    assert lp.token_logprobs[1:] == pytest.approx([d.logprob for d in direct[1:]], abs=1e-6)
    # {token text: logprob}: two byte-fallback alternatives that both print U+FFFD share one key.
    for got, d in zip(lp.top_logprobs[1:], direct[1:]):
        assert len(d.top) == 2 and got == pytest.approx({t.token: t.logprob for t in d.top}, abs=1e-6)
    both = real.client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=1, max_tokens=3,
                                          temperature=0, extra_body={"ignore_eos": True})
    blp = both.choices[0].logprobs
    assert len(blp.tokens) == len(ids) + 3 and blp.token_logprobs[: len(ids)][1:] == pytest.approx(
        lp.token_logprobs[1:], abs=1e-6)
    assert blp.text_offset[len(ids)] == len(prompt)
    chunks = list(real.client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=1, max_tokens=3,
                                                 temperature=0, stream=True, extra_body={"ignore_eos": True}))
    first = chunks[0].choices[0]
    assert first.text == prompt and first.logprobs.token_logprobs[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == both.choices[0].text
    r = httpx.post(real.url + "/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 0})
    assert r.status_code == 400 and "echo" in r.json()["error"]["message"]
