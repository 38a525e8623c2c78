"""Responses and Messages over the real AsyncEngine on the tiny demo model, through the official
openai and anthropic clients (text, stream, a tool loop, json_schema, thinking), and a fuzz of
malformed bodies on both surfaces: never a 5xx, always the surface's envelope, no KV block left."""

from __future__ import annotations

import copy
import json
import random
import time

import anthropic
import httpx
import openai
import pytest
from api_support import real_engine_server

MODEL = "google/gemma-4-26b-a4b-it"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                           "days": {"type": "integer", "enum": [1, 2, 3]}},
          "required": ["city", "days"], "additionalProperties": False}


@pytest.fixture(scope="module")
def real(demo_dir):
    with real_engine_server(demo_dir, keepalive_interval_s=0.5) as srv:
        srv.oai = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
        srv.ant = anthropic.Anthropic(base_url=srv.root, api_key="x", max_retries=0, timeout=120)
        yield srv


def idle(engine) -> tuple[float, int, int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = engine.stats()
        if (s.kv_usage, s.num_running, s.num_waiting) == (0, 0, 0):
            break
        time.sleep(0.02)
    s = engine.stats()
    return s.kv_usage, s.num_running, s.num_waiting


def test_responses_create_and_stream_agree(real):
    kw = dict(model=MODEL, input="Tell me about the sea.", max_output_tokens=10, temperature=0,
              extra_body={"ignore_eos": True})
    whole = real.oai.responses.create(**kw)
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage.output_tokens == 10
    with real.oai.responses.stream(**kw) as s:
        events = list(s)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # The SDK's helper finalises only on response.completed; an incomplete one carries its response.
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == 10


def test_responses_tool_loop_and_json_schema(real):
    tools = [{"type": "function", "name": "get_weather", "parameters": SCHEMA, "strict": True}]
    first = real.oai.responses.create(model=MODEL, input="Weather?", tools=tools, tool_choice="required",
                                      parallel_tool_calls=False, max_output_tokens=200, extra_body={"seed": 1})
    (call,) = [o for o in first.output if o.type == "function_call"]
    args = json.loads(call.arguments)
    assert call.name == "get_weather" and args["city"] in ("Paris", "Rome")
    second = real.oai.responses.create(model=MODEL, tools=tools, max_output_tokens=8, extra_body={"seed": 2}, input=[
        {"role": "user", "content": "Weather?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.status in ("completed", "incomplete") and second.usage.input_tokens > first.usage.input_tokens
    structured = real.oai.responses.create(model=MODEL, input="JSON", max_output_tokens=200, extra_body={"seed": 5}, text={
        "format": {"type": "json_schema", "name": "w", "schema": SCHEMA, "strict": True}})
    assert structured.status == "completed"
    obj = json.loads(structured.output_text)
    assert obj["city"] in ("Paris", "Rome") and obj["days"] in (1, 2, 3)


def test_messages_sync_stream_tool_loop_and_thinking(real):
    user = [{"role": "user", "content": "Weather?"}]
    whole = real.ant.messages.create(model=MODEL, max_tokens=6, messages=user, extra_body={"temperature": 0,
                                                                                          "ignore_eos": True})
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 6
    with real.ant.messages.stream(model=MODEL, max_tokens=6, messages=user,
                                  extra_body={"temperature": 0, "ignore_eos": True}) as s:
        final = s.get_final_message()
    assert final.content[0].text == whole.content[0].text and final.stop_reason == "max_tokens"
    tools = [{"name": "get_weather", "input_schema": SCHEMA}]
    called = real.ant.messages.create(model=MODEL, max_tokens=200, messages=user, tools=tools,
                                      tool_choice={"type": "tool", "name": "get_weather",
                                                   "disable_parallel_tool_use": True})
    (use,) = [b for b in called.content if b.type == "tool_use"]
    assert called.stop_reason == "tool_use" and use.input["city"] in ("Paris", "Rome")
    back = real.ant.messages.create(model=MODEL, max_tokens=5, tools=tools, messages=user + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in called.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert back.stop_reason in ("end_turn", "max_tokens")
    thought = real.ant.messages.create(model=MODEL, max_tokens=30, messages=user,
                                       thinking={"type": "enabled", "budget_tokens": 8})
    assert thought.stop_reason in ("end_turn", "max_tokens")
    assert all(b.type in ("thinking", "text") for b in thought.content)
    n = real.ant.messages.count_tokens(model=MODEL, messages=user, tools=tools).input_tokens
    assert n == called.usage.input_tokens + called.usage.cache_read_input_tokens
    assert idle(real.engine) == (0, 0, 0)


# -- fuzz ---------------------------------------------------------------------------------------

VALID = {
    "/api/v1/responses": {"model": MODEL, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "reasoning": {"effort": "low"}, "text": {"format": {"type": "json_object"}}, "max_output_tokens": 3},
    "/v1/messages": {"model": MODEL, "max_tokens": 3, "system": "s", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 2}, "stop_sequences": ["x"]},
}
VALID["/v1/messages/count_tokens"] = {k: v for k, v in VALID["/v1/messages"].items() if k != "max_tokens"}
JUNK = [None, 0, -1, 1.5, 10**30, "", "x", [], {}, [1], {"a": 1}, True, "\u0000", "<|turn>", [{"type": "?"}]]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(body, rng):
    body = copy.deepcopy(body)
    path = rng.choice([p for p in _paths(body) if p])
    parent = body
    for k in path[:-1]:
        parent = parent[k]
    if rng.random() < 0.3 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(JUNK))
    return body


def _check_envelope(path, resp):
    data = resp.json()
    if path.startswith("/v1/messages"):
        assert data["type"] == "error" and isinstance(data["error"]["message"], str), data
        assert data["error"]["type"].endswith("_error"), data
    else:
        assert data["error"]["code"] == resp.status_code and isinstance(data["error"]["message"], str), data


@pytest.mark.parametrize("path", list(VALID))
def test_fuzzed_bodies_never_5xx_or_leak(real, path):
    rng = random.Random(1234)
    url = real.root + path
    statuses = set()
    with httpx.Client(timeout=60) as client:
        for i in range(120):
            body = _mutate(VALID[path], rng)
            if i % 3 == 0:
                body = _mutate(body, rng)
            if isinstance(body, dict) and i % 4 == 0:
                body["stream"] = True
            if i % 10 == 9:
                raw = json.dumps(body).encode()[: rng.randrange(1, 40)]
                resp = client.post(url, content=raw, headers={"content-type": "application/json"})
            else:
                resp = client.post(url, json=body)
            statuses.add(resp.status_code)
            assert resp.status_code < 500, (body, resp.text)
            if resp.status_code >= 400:
                _check_envelope(path, resp)
    assert {200, 400} <= statuses
    assert idle(real.engine) == (0, 0, 0)
