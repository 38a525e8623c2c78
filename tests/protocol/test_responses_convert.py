"""Responses API translation, both ways, with exact fields: items -> chat messages, chat answer ->
the `response` object, chat deltas -> the `response.*` event sequence."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from gemmaserve.protocol.common import FieldError
from gemmaserve.protocol.responses import ResponsesRequest
from gemmaserve.protocol.responses_convert import ResponseEvents, ResponseFrame, to_chat_request, whole_response

TOOL = {"type": "function", "name": "get_weather", "description": "Weather", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CHAT_USAGE = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "cost": 1.92e-06,
              "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2}}
USAGE = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 4,
         "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 14, "cost": 1.92e-06}


def ids():
    n = itertools.count()
    return lambda prefix: f"{prefix}_{next(n)}"


def chat(body):
    return to_chat_request(ResponsesRequest.model_validate(body)).model_dump(exclude_none=True, exclude_unset=True)


def test_string_input_and_instructions():
    c = chat({"model": "m", "input": "Hi", "instructions": "Be brief", "max_output_tokens": 7, "temperature": 0.5})
    assert c["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]
    assert (c["max_tokens"], c["temperature"], c["model"]) == (7, 0.5, "m")


def test_items_tool_loop_with_reasoning_passed_back():
    c = chat({"input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "sys"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Look:"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Need weather"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Rome is sunny."}]},
        {"role": "user", "content": "thanks"},
    ], "tools": [TOOL], "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": False})
    assert c["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]},
        {"role": "assistant", "reasoning": "Need weather", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "tool", "content": "rain", "tool_call_id": "call_2"},
        {"role": "assistant", "content": "Rome is sunny."},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
    ]
    assert c["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather", "parameters": TOOL["parameters"], "strict": True}}]
    assert c["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert c["parallel_tool_calls"] is False


def test_reasoning_text_format_and_logprobs_map_to_chat_fields():
    c = chat({"input": "x", "reasoning": {"effort": "low", "max_tokens": 30, "summary": "auto"},
              "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
              "top_logprobs": 2})
    assert c["reasoning"] == {"effort": "low", "max_tokens": 30, "summary": "auto"}
    assert c["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "out", "json_schema": {"type": "object"}, "strict": True}}
    assert (c["logprobs"], c["top_logprobs"]) == (True, 2)
    assert chat({"input": "x", "text": {"format": {"type": "json_object"}}})["response_format"] == {"type": "json_object"}
    assert "response_format" not in chat({"input": "x", "text": {"format": {"type": "text"}}})
    assert chat({"input": "x", "reasoning": {"enabled": False}})["reasoning"]["enabled"] is False


@pytest.mark.parametrize("body, field", [
    ({"input": "x", "store": True}, "store"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "tools": [{"type": "bogus_tool"}]}, "type"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "name"),
    ({"input": "x", "max_tokens": 3, "max_output_tokens": 4}, "max_output_tokens"),
])
def test_refused_fields_name_themselves(body, field):
    with pytest.raises(ValidationError) as err:
        ResponsesRequest.model_validate(body)
    blamed = err.value.errors()[0]["ctx"]["error"]
    assert isinstance(blamed, FieldError) and blamed.param == field


@pytest.mark.parametrize("items, field", [
    ([{"type": "item_reference", "id": "msg_1"}], "input[0]"),
    ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], "input[0].content[0]"),
    ([{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}], "input[0].content[0].image_url"),
    ([{"role": "system", "content": "only a system turn"}], "input"),
])
def test_translation_errors_name_the_item(items, field):
    with pytest.raises(FieldError) as err:
        to_chat_request(ResponsesRequest.model_validate({"input": items}))
    assert err.value.param == field


def frame():
    req = ResponsesRequest.model_validate({"input": "x", "tools": [TOOL], "max_output_tokens": 9})
    return ResponseFrame(req, "gen-1-abc", "google/gemma-4-26b-a4b-it-20260403", created_at=100)


def test_whole_response_items_status_and_usage():
    msg = {"content": "Hi", "reasoning": "think", "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]}
    r = whole_response(frame(), msg, "tool_calls", CHAT_USAGE, new_id=ids())
    assert r["output"] == [
        {"id": "rs_0", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "think"}]},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}]},
        {"id": "fc_2", "type": "function_call", "call_id": "call_9", "name": "get_weather",
         "arguments": '{"city":"Rome"}', "status": "completed"},
    ]
    assert (r["id"], r["object"], r["status"], r["output_text"], r["usage"]) == ("gen-1-abc", "response", "completed", "Hi", USAGE)
    assert (r["max_output_tokens"], r["tools"][0]["name"], r["store"], r["incomplete_details"]) == (9, "get_weather", False, None)
    cut = whole_response(frame(), {"content": "Hel"}, "length", CHAT_USAGE, new_id=ids())
    assert (cut["status"], cut["incomplete_details"], cut["output"][0]["status"]) == (
        "incomplete", {"reason": "max_output_tokens"}, "incomplete")


def test_stream_event_sequence():
    ev = ResponseEvents(frame(), new_id=ids())
    out = ev.start()
    for d in [{"reasoning": "a"}, {"reasoning": "b"}, {"content": "Hi"},
              {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '"Rome"}'}}]}]:
        out += ev.feed(d)
    out += ev.finish("tool_calls", CHAT_USAGE)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert [e["type"] for e in out] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert out[0]["response"]["status"] == "in_progress" and out[0]["response"]["output"] == []
    assert out[2]["item"] == {"id": "rs_0", "type": "reasoning", "summary": [], "content": []}
    assert out[4] == {"type": "response.reasoning_text.delta", "sequence_number": 4, "item_id": "rs_0",
                      "output_index": 0, "content_index": 0, "delta": "a"}
    assert out[11] == {"type": "response.output_text.delta", "sequence_number": 11, "item_id": "msg_1",
                       "output_index": 1, "content_index": 0, "delta": "Hi", "logprobs": []}
    assert out[15]["item"] == {"id": "fc_2", "type": "function_call", "call_id": "call_1", "name": "get_weather",
                               "arguments": "", "status": "in_progress"}
    assert out[18] == {"type": "response.function_call_arguments.done", "sequence_number": 18, "item_id": "fc_2",
                       "output_index": 2, "name": "get_weather", "arguments": '{"city":"Rome"}'}
    final = out[-1]["response"]
    assert final["status"] == "completed" and final["usage"] == USAGE and final["output_text"] == "Hi"
    assert final["output"] == whole_response(frame(), {"content": "Hi", "reasoning": "ab", "tool_calls": [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        "tool_calls", CHAT_USAGE, new_id=ids())["output"]


def test_stream_incomplete_failed_and_empty():
    ev = ResponseEvents(frame(), new_id=ids())
    out = ev.feed({"content": "Hel"}) + ev.finish("length", CHAT_USAGE)
    assert out[-1]["type"] == "response.incomplete"
    assert out[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out[-2]["item"]["status"] == "incomplete"
    ev = ResponseEvents(frame(), new_id=ids())
    failed = ev.finish("error", CHAT_USAGE, error={"code": "server_error", "message": "boom"})
    assert failed[-1]["type"] == "response.failed" and failed[-1]["response"]["error"]["message"] == "boom"
    ev = ResponseEvents(frame(), new_id=ids())
    empty = ev.finish("stop", CHAT_USAGE)
    assert [e["type"] for e in empty][-1] == "response.completed"
    assert empty[-1]["response"]["output"][0]["content"][0]["text"] == ""


def test_namespaces_flatten_and_hosted_tools_are_not_offered():
    ns = {"type": "namespace", "name": "agents", "description": "sub-agents", "tools": [
        {"type": "function", "name": "spawn", "parameters": {"type": "object"}}]}
    req = ResponsesRequest.model_validate({"input": "x", "tools": [TOOL, ns, {"type": "web_search",
                                                                              "external_web_access": False}]})
    assert [t["function"]["name"] for t in to_chat_request(req).model_dump(exclude_none=True)["tools"]] == [
        "get_weather", "spawn"]
    f = ResponseFrame(req, "gen-1-abc", "m", created_at=1)
    msg = {"tool_calls": [{"id": "call_1", "function": {"name": "spawn", "arguments": "{}"}},
                          {"id": "call_2", "function": {"name": "get_weather", "arguments": "{}"}}]}
    spawn, weather = whole_response(f, msg, "tool_calls", CHAT_USAGE, new_id=ids())["output"]
    assert spawn["namespace"] == "agents" and "namespace" not in weather
    ev = ResponseEvents(f, new_id=ids())
    added = ev.feed({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "spawn", "arguments": ""}}]})
    assert added[0]["item"]["namespace"] == "agents"
