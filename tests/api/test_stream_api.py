"""SSE streaming of chat and legacy completions: exact framing, deltas, keep-alives, errors, abort."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from gemmaserve.types import QueueFullError

MODEL = "google/gemma-4-26b-a4b-it"
MSGS = [{"role": "user", "content": "Hi"}]
THINK_AND_CALL = ["<|channel>", "thought\n", "Need", " weather", "<channel|>", "<|tool_call>",
                  "call:get_weather{city:", '<|"|>', "Paris", '<|"|>', "}", "<tool_call|>"]
TOOLS = [{"type": "function", "function": {"name": "get_weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def sse_events(raw: bytes) -> list[str]:
    """Split an SSE body into events; every event must end with a blank line."""
    text = raw.decode()
    assert text.endswith("\n\n")
    return text[:-2].split("\n\n")


def stream_raw(url: str, body: dict) -> tuple[httpx.Response, list[str]]:
    with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True}, timeout=30) as r:
        data = r.read()
    return r, sse_events(data)


def test_plain_stream_framing(fake):
    r, events = stream_raw(fake.url, {"model": MODEL, "messages": MSGS})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    gen_id = r.headers["x-generation-id"]
    assert all(c["id"] == gen_id and c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "google/gemma-4-26b-a4b-it-20260403" and c["provider"] == "gemmaserve" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas == [{"role": "assistant", "content": t} for t in ["Hello", " world", "!"]]
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "finish_reason": "stop", "native_finish_reason": "stop", "logprobs": None}]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    # The stored generation agrees with the streamed usage.
    rec = httpx.get(fake.url + "/generation", params={"id": gen_id}).json()["data"]
    assert rec["streamed"] is True and rec["cancelled"] is False
    assert rec["tokens_completion"] == usage_chunk["usage"]["completion_tokens"]
    assert rec["total_cost"] == usage_chunk["usage"]["cost"]


def test_reasoning_and_tool_call_stream_exact(fake):
    fake.engine.script = THINK_AND_CALL
    r, events = stream_raw(fake.url, {"model": MODEL, "messages": MSGS, "tools": TOOLS, "reasoning": {"effort": "low"}})
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning", "") for d in deltas)
    details = "".join(d["reasoning_details"][0]["text"] for d in deltas if "reasoning_details" in d)
    assert reasoning == details == "Need weather"
    for d in deltas:
        if "reasoning_details" in d:
            assert d["reasoning_details"][0]["format"] == "unknown" and d["reasoning_details"][0]["index"] == 0
            assert d["content"] == ""
    frags = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert frags[0]["index"] == 0 and frags[0]["type"] == "function" and frags[0]["id"].startswith("call_")
    assert frags[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all(f["index"] == 0 and set(f) == {"index", "function"} for f in frags[1:])
    args = "".join(f["function"]["arguments"] for f in frags)
    assert json.loads(args) == {"city": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["choices"][0]["native_finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    # The same output, whole, gives byte-identical arguments.
    whole = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": MSGS, "tools": TOOLS}).json()
    assert whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == args


def test_openai_stream_accumulates_tool_calls(fake):
    fake.engine.script = THINK_AND_CALL
    client = openai.OpenAI(base_url=fake.url, api_key="unused", max_retries=0)
    with client.chat.completions.stream(model=MODEL, messages=MSGS, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_openai_plain_stream_and_usage(fake):
    client = openai.OpenAI(base_url=fake.url, api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world!"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_keepalive_comments_before_first_token(fake):
    fake.engine.first_delay = 0.4  # keep-alive interval is 0.05 s on this server
    r, events = stream_raw(fake.url, {"model": MODEL, "messages": MSGS})
    n = 0
    while events[n] == ": OPENROUTER PROCESSING":
        n += 1
    assert n >= 2
    assert all(e.startswith("data: ") for e in events[n:])
    assert ": OPENROUTER PROCESSING" not in events[n:]
    assert json.loads(events[n][6:])["choices"][0]["delta"]["content"] == "Hello"


def test_headers_and_a_comment_come_soon_even_with_a_long_keepalive_interval(demo_tokenizer):
    # Keep-alive every 30 s, first token after ~1.6 s: the status line is not held until the first
    # token (or 30 s); after guards.FIRST_WAIT_S (1 s) the stream opens with a comment.
    from api_support import FakeEngine, ServerThread, make_state

    from gemmaserve.api.app import create_app

    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size, first_delay=1.6)
    with ServerThread(create_app(make_state(demo_tokenizer, engine, keepalive_interval_s=30.0))) as srv:
        r, events = stream_raw(srv.url, {"model": MODEL, "messages": MSGS})
    assert r.status_code == 200
    assert events[0] == ": OPENROUTER PROCESSING" and events[1].startswith("data: ")
    assert events.count(": OPENROUTER PROCESSING") == 1 and events[-1] == "data: [DONE]"


def test_error_mid_stream_is_in_band(fake):
    fake.engine.fail_after = 2
    r, events = stream_raw(fake.url, {"model": MODEL, "messages": MSGS})
    assert r.status_code == 200
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    err = chunks[-2]
    assert err["error"] == {"code": 500, "message": "scripted failure", "metadata": {"error_type": "server"}}
    assert err["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                               "native_finish_reason": "error"}]
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]
    assert events[-1] == "data: [DONE]"


def test_submit_error_before_stream_keeps_http_status(fake):
    fake.engine.submit_error = QueueFullError("full")
    r = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": MSGS, "stream": True})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == 429 and r.json()["error"]["metadata"]["error_type"] == "rate_limit_exceeded"


def test_stream_logprobs(fake, demo_tokenizer):
    r, events = stream_raw(fake.url, {"model": MODEL, "messages": MSGS, "logprobs": True, "top_logprobs": 1})
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    toks = [c["token"] for ch in chunks if ch["choices"] and ch["choices"][0]["logprobs"]
            for c in ch["choices"][0]["logprobs"]["content"]]
    ids = [i for p in ["Hello", " world", "!"] for i in demo_tokenizer.encode(p)]
    assert toks == [demo_tokenizer.decode([i]) for i in ids]


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_client_disconnect_aborts_request(fake):
    fake.engine.script = [f" w{i}" for i in range(200)]
    fake.engine.step_delay = 0.05
    with httpx.stream("POST", fake.url + "/chat/completions",
                      json={"model": MODEL, "messages": MSGS, "stream": True}, timeout=30) as r:
        gen_id = r.headers["x-generation-id"]
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert fake.engine.active  # the request holds its "blocks"
    # Closing the response closed the connection: the engine must be told at once.
    assert wait_for(lambda: not fake.engine.active)
    assert fake.engine.calls[-1].request_id in fake.engine.aborted
    assert wait_for(lambda: fake.state.generations.get(gen_id) is not None)
    assert fake.state.generations.get(gen_id)["cancelled"] is True


def test_legacy_completions_stream(fake):
    with httpx.stream("POST", fake.url + "/completions",
                      json={"model": MODEL, "prompt": "Once", "stream": True}, timeout=30) as r:
        events = sse_events(r.read())
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "Hello world!"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_client_disconnect_aborts_whole_request(fake):
    fake.engine.script = [f" w{i}" for i in range(200)]
    fake.engine.step_delay = 0.05
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": MSGS}, timeout=0.5)
    rid = fake.engine.calls[-1].request_id
    assert wait_for(lambda: rid in fake.engine.aborted)
    assert not fake.engine.active
    assert wait_for(lambda: fake.state.generations.get(rid) is not None)
    assert fake.state.generations.get(rid)["cancelled"] is True


def test_client_disconnect_aborts_whole_legacy_completion(fake):
    fake.engine.script = [f" w{i}" for i in range(200)]
    fake.engine.step_delay = 0.05
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fake.url + "/completions", json={"model": MODEL, "prompt": "Once"}, timeout=0.5)
    rid = fake.engine.calls[-1].request_id
    assert wait_for(lambda: rid in fake.engine.aborted)
    assert not fake.engine.active
    assert wait_for(lambda: fake.state.generations.get(rid) is not None)
    rec = fake.state.generations.get(rid)
    assert rec["cancelled"] is True and rec["streamed"] is False and rec["tokens_completion"] > 0


def test_provider_preferences_that_exclude_us_are_404(fake):
    for prefs in ({"only": ["deepinfra"]}, {"ignore": ["gemmaserve"]}, {"quantizations": ["fp8"]},
                  {"order": ["together"], "allow_fallbacks": False}, {"max_price": {"prompt": 0.01}}):
        r = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": MSGS, "provider": prefs})
        assert r.status_code == 404 and "provider preferences" in r.json()["error"]["message"], prefs
    for prefs in ({"only": ["gemmaserve"]}, {"order": ["together"]}, {"quantizations": ["bf16"]},
                  {"max_price": {"prompt": 1, "completion": "2"}}, {"sort": "price", "data_collection": "deny"}):
        r = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": MSGS, "provider": prefs})
        assert r.status_code == 200, prefs


def test_message_name_is_prefixed(fake, demo_tokenizer):
    msgs = [{"role": "user", "name": "alice", "content": "Hi"}]
    httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": msgs})
    assert "alice: Hi" in demo_tokenizer.decode(fake.engine.calls[-1].prompt_ids)


def test_debug_echo_upstream_body_first_chunk(fake, demo_tokenizer):
    r, events = stream_raw(fake.url, {"model": MODEL, "messages": MSGS, "max_tokens": 9, "temperature": 0.5,
                                      "debug": {"echo_upstream_body": True}})
    first = json.loads(events[0][6:])
    assert first["choices"] == []
    echo = first["debug"]["echo_upstream_body"]
    assert echo["prompt_token_ids"] == fake.engine.calls[-1].prompt_ids
    assert demo_tokenizer.encode(echo["prompt"]) == echo["prompt_token_ids"]
    assert echo["sampling_params"]["max_tokens"] == 9 and echo["sampling_params"]["temperature"] == 0.5
    assert echo["enable_thinking"] is False
    assert json.loads(events[1][6:])["choices"][0]["delta"]["content"] == "Hello"
