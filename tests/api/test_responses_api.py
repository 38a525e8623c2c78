"""POST /responses over the scripted fake engine, through the official openai client:
responses.create and responses.stream (text, reasoning, a tool loop, json_schema), exact fields."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

MODEL = "google/gemma-4-26b-a4b-it"
THINK_AND_CALL = ["<|channel>", "thought\n", "Need", " weather", "<channel|>", "<|tool_call>",
                  "call:get_weather{city:", '<|"|>', "Rome", '<|"|>', "}", "<tool_call|>"]
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture
def client(fake):
    return openai.OpenAI(base_url=fake.url, api_key="x", max_retries=0, timeout=30)


def test_create_text(fake, client):
    r = client.responses.create(model=MODEL, input="Hi", instructions="Be brief", max_output_tokens=50,
                                temperature=0.3)
    assert (r.object, r.status, r.output_text, r.model) == ("response", "completed", "Hello world!",
                                                            "google/gemma-4-26b-a4b-it-20260403")
    assert r.id.startswith("gen-") and len(r.output) == 1 and r.output[0].type == "message"
    assert r.output[0].content[0].text == "Hello world!" and r.output[0].status == "completed"
    u = r.usage
    assert (u.output_tokens, u.output_tokens_details.reasoning_tokens, u.input_tokens_details.cached_tokens) == (5, 0, 0)
    assert u.total_tokens == u.input_tokens + 5 and u.model_extra["cost"] > 0
    call = fake.engine.calls[-1]
    assert (call.params.max_tokens, call.params.temperature) == (50, 0.3)
    assert fake.state.generations.get(r.id)["api_type"] == "responses"


def test_max_output_tokens_is_incomplete(fake, client):
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.usage.output_tokens == 2


def test_stream_reasoning_and_tool_call_then_tool_loop(fake, client):
    fake.engine.script = list(THINK_AND_CALL)
    with client.responses.stream(model=MODEL, input="Weather in Rome?", tools=TOOLS,
                                 reasoning={"effort": "low"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "Need weather"
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Rome"}
    reasoning, call = final.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "Need weather"
    assert (call.type, call.name, json.loads(call.arguments), call.status) == ("function_call", "get_weather",
                                                                              {"city": "Rome"}, "completed")
    assert final.usage.output_tokens_details.reasoning_tokens > 0
    # Second turn: the reasoning item, the call and its output go back; the model answers in text.
    fake.engine.script = ["It is ", "sunny."]
    second = client.responses.create(model=MODEL, tools=TOOLS, input=[
        {"role": "user", "content": "Weather in Rome?"},
        reasoning.model_dump(exclude_none=True), call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}])
    assert second.output_text == "It is sunny."
    prompt = fake.state.tokenizer.decode(fake.engine.calls[-1].prompt_ids)
    assert "get_weather" in prompt and "sunny" in prompt and "Rome" in prompt


def test_json_schema_format_sets_a_grammar(fake, client):
    fake.engine.script = ['{"a": ', "1}"]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    r = client.responses.create(model=MODEL, input="json please",
                                text={"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}})
    assert json.loads(r.output_text) == {"a": 1} and r.text.format.type == "json_schema"
    assert len(fake.engine.calls[-1].params.constraints) == 1


def test_stream_text_event_shapes(fake):
    with httpx.stream("POST", fake.url + "/responses", json={"model": MODEL, "input": "Hi", "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    frames = [f for f in raw.split("\n\n") if f.strip() and not f.startswith(":")]
    names = [f.split("\n")[0].removeprefix("event: ") for f in frames]
    datas = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
    assert names == [d["type"] for d in datas]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                     "response.output_text.delta", "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert "[DONE]" not in raw and datas[7]["text"] == "Hello world!"


@pytest.mark.parametrize("body, status, param", [
    ({"input": "x", "store": True}, 400, "store"),
    ({"input": "x", "previous_response_id": "resp_1"}, 400, "previous_response_id"),
    ({"input": "x", "tools": [{"type": "bogus_tool"}]}, 400, "tools[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0]"),
    ({"input": "x", "temperature": 3}, 400, "temperature"),
    ({}, 400, "input"),
    ({"input": "x", "model": "other/model"}, 404, "model"),
])
def test_errors_use_openrouter_envelope(fake, body, status, param):
    resp = httpx.post(fake.url + "/responses", json={"model": MODEL, **body})
    assert resp.status_code == status
    err = resp.json()["error"]
    assert err["code"] == status and err["metadata"]["param"] == param and param in err["message"]


def test_models_lists_the_spoken_apis(fake):
    m = httpx.get(fake.url + "/models").json()["data"][0]
    apis = m["apis"]
    assert set(apis) == {"chat_completions", "completions", "responses", "messages", "messages_count_tokens",
                         "batches", "response_cache"}
    for name, path in apis.items():
        if path.startswith("/"):  # each one is served: an empty body is a 400 of its own, never a 404
            assert httpx.post(fake.root + path, json={}).status_code == 400, name
