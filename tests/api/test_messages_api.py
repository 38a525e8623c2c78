"""POST /messages and /messages/count_tokens over the scripted fake engine, through the official
anthropic client (sync, stream, tool loop, thinking), plus x-api-key auth and the error envelope."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest
from api_support import API_KEY

MODEL = "google/gemma-4-26b-a4b-it"
THINK_AND_CALL = ["<|channel>", "thought\n", "Need", " weather", "<channel|>", "<|tool_call>",
                  "call:get_weather{city:", '<|"|>', "Rome", '<|"|>', "}", "<tool_call|>"]
TOOLS = [{"name": "get_weather", "description": "Weather",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
USER = [{"role": "user", "content": "Weather in Rome?"}]


@pytest.fixture
def client(fake):
    return anthropic.Anthropic(base_url=fake.root, api_key="x", max_retries=0, timeout=30)


def test_create_text(fake, client):
    # anthropic 2.x dropped the sampling keywords from create(); the API still takes them.
    m = client.messages.create(model=MODEL, max_tokens=50, system="Be brief", messages=USER,
                               extra_body={"temperature": 0.5, "top_k": 7})
    assert (m.type, m.role, m.stop_reason, m.stop_sequence) == ("message", "assistant", "end_turn", None)
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "Hello world!"
    assert m.id.startswith("gen-") and m.model == "google/gemma-4-26b-a4b-it-20260403"
    assert m.usage.output_tokens == 5 and m.usage.input_tokens == len(fake.engine.calls[-1].prompt_ids)
    p = fake.engine.calls[-1].params
    assert (p.max_tokens, p.temperature, p.top_k) == (50, 0.5, 7)
    assert fake.state.generations.get(m.id)["api_type"] == "messages"


def test_max_tokens_and_stop_sequence(fake, client):
    assert client.messages.create(model=MODEL, max_tokens=2, messages=USER).stop_reason == "max_tokens"
    m = client.messages.create(model=MODEL, max_tokens=50, messages=USER, stop_sequences=["END"])
    assert fake.engine.calls[-1].params.stop == ["END"] and m.stop_reason == "end_turn"


def test_stream_thinking_and_tool_use_then_tool_loop(fake, client):
    fake.engine.script = list(THINK_AND_CALL)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=USER, tools=TOOLS,
                                thinking={"type": "enabled", "budget_tokens": 20}) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    thinking, tool = final.content
    assert (thinking.type, thinking.thinking) == ("thinking", "Need weather")
    assert (tool.type, tool.name, tool.input) == ("tool_use", "get_weather", {"city": "Rome"})
    assert final.stop_reason == "tool_use"
    # The thinking budget reached the engine as the thinking cap.
    assert any(type(c).__name__ == "ThinkingBudget" for c in fake.engine.calls[-1].params.constraints)
    fake.engine.script = ["Sunny", "."]
    second = client.messages.create(model=MODEL, max_tokens=64, tools=TOOLS, messages=USER + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "sunny, 24C"}]}])
    assert second.content[0].text == "Sunny." and second.stop_reason == "end_turn"
    prompt = fake.state.tokenizer.decode(fake.engine.calls[-1].prompt_ids)
    assert "sunny, 24C" in prompt and "get_weather" in prompt


def test_stream_wire_events(fake):
    body = {"model": MODEL, "max_tokens": 20, "messages": USER, "stream": True}
    with httpx.stream("POST", fake.root + "/v1/messages", json=body) as resp:
        raw = resp.read().decode()
    frames = [f for f in raw.split("\n\n") if f.strip()]
    names = [f.split("\n")[0].removeprefix("event: ") for f in frames]
    datas = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
    assert names == [d["type"] for d in datas]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert datas[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert datas[-2]["usage"]["output_tokens"] == 5 and datas[-2]["usage"]["cost"] > 0


def test_forced_tool_choice_uses_the_tool_constraint(fake, client):
    fake.engine.script = list(THINK_AND_CALL[5:])
    m = client.messages.create(model=MODEL, max_tokens=64, messages=USER, tools=TOOLS,
                               tool_choice={"type": "tool", "name": "get_weather"})
    assert m.stop_reason == "tool_use" and len(fake.engine.calls[-1].params.constraints) == 1


def test_output_config_format_is_a_json_schema_grammar(fake, client):
    fake.engine.script = ['{"a": ', "1}"]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    m = client.messages.create(model=MODEL, max_tokens=20, messages=USER,
                               output_config={"format": {"type": "json_schema", "schema": schema}})
    assert json.loads(m.content[0].text) == {"a": 1} and len(fake.engine.calls[-1].params.constraints) == 1


def test_count_tokens_matches_the_prompt(fake, client):
    n = client.messages.count_tokens(model=MODEL, messages=USER, tools=TOOLS).input_tokens
    client.messages.create(model=MODEL, max_tokens=5, messages=USER, tools=TOOLS)
    assert n == len(fake.engine.calls[-1].prompt_ids)


def test_x_api_key_and_bearer_on_a_keyed_server(auth_server):
    root = auth_server.root
    body = {"model": "my-gemma", "max_tokens": 5, "messages": USER}
    assert httpx.post(root + "/v1/messages", json=body, headers={"x-api-key": API_KEY}).status_code == 200
    assert httpx.post(root + "/v1/messages", json=body, headers={"authorization": f"Bearer {API_KEY}"}).status_code == 200
    bad = httpx.post(root + "/v1/messages", json=body, headers={"x-api-key": "nope"})
    assert bad.status_code == 401
    assert bad.json() == {"type": "error", "error": {"type": "authentication_error", "message": "User not found."}}
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=root, api_key="wrong", max_retries=0).messages.create(
            model="my-gemma", max_tokens=5, messages=USER)


@pytest.mark.parametrize("body, status, kind, field", [
    ({"messages": USER}, 400, "invalid_request_error", "max_tokens"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, 400,
     "invalid_request_error", "messages[0].content"),
    ({"max_tokens": 5, "messages": USER, "tools": [{"name": "w", "type": "web_search_20250305"}]}, 400,
     "invalid_request_error", "tools[0].type"),
    ({"max_tokens": 5, "messages": USER, "tool_choice": {"type": "any"}}, 400, "invalid_request_error", "tool_choice"),
    ({"max_tokens": 5, "messages": USER, "model": "other/model"}, 404, "not_found_error", "model"),
])
def test_errors_use_anthropic_envelope(fake, body, status, kind, field):
    resp = httpx.post(fake.root + "/v1/messages", json={"model": MODEL, **body})
    assert resp.status_code == status
    data = resp.json()
    assert data["type"] == "error" and data["error"]["type"] == kind and field in data["error"]["message"]


def test_unreadable_json_and_engine_refusal(fake):
    resp = httpx.post(fake.root + "/v1/messages", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
    from gemmaserve.types import QueueFullError

    fake.engine.submit_error = QueueFullError("full")
    resp = httpx.post(fake.root + "/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": USER})
    assert resp.status_code == 429 and resp.json()["error"]["type"] == "rate_limit_error"


def test_body_over_the_limit_is_anthropic_shaped(fake):
    big = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x" * (70 * 1024)}]}
    resp = httpx.post(fake.root + "/v1/messages", json=big)
    assert resp.status_code == 413
    assert resp.json() == {"type": "error", "error": {"type": "request_too_large",
                                                      "message": "Request body exceeds the limit of 65536 bytes"}}
    assert httpx.post(fake.url + "/chat/completions", json=big).json()["error"]["code"] == 413
