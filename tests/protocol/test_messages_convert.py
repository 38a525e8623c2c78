"""Anthropic Messages translation, both ways, with exact fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gemmaserve.protocol.common import FieldError
from gemmaserve.protocol.messages import CountTokensRequest, MessagesRequest
from gemmaserve.protocol.messages_convert import MessageEvents, error_body, stop_reason, to_chat_request, whole_message

TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
CHAT_USAGE = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "cost": 1.92e-06,
              "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2}}


def chat(body):
    return to_chat_request(MessagesRequest.model_validate({"max_tokens": 64, **body})).model_dump(
        exclude_none=True, exclude_unset=True)


def test_blocks_to_chat_messages():
    c = chat({"model": "m", "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "need it", "signature": "sig"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
            {"type": "text", "text": "and?"}]},
    ], "tools": TOOLS, "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"], "temperature": 0.2, "top_k": 5, "metadata": {"user_id": "u1"}})
    assert c["messages"] == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": [{"type": "text", "text": "Look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": "Calling.", "reasoning": "need it", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"},
        {"role": "user", "content": [{"type": "text", "text": "and?"}]},
    ]
    assert c["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                            "parameters": {"type": "object"}}}]
    assert (c["tool_choice"], c["parallel_tool_calls"], c["stop"], c["max_tokens"]) == ("required", False, ["END"], 64)
    assert (c["temperature"], c["top_k"], c["user"], c["model"]) == (0.2, 5, "u1", "m")


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}})])
def test_tool_choice(choice, expected):
    assert chat({"messages": [{"role": "user", "content": "x"}], "tools": TOOLS, "tool_choice": choice})["tool_choice"] == expected


def test_thinking_maps_to_reasoning_budget():
    msgs = [{"role": "user", "content": "x"}]
    assert chat({"messages": msgs, "thinking": {"type": "enabled", "budget_tokens": 16}})["reasoning"]["max_tokens"] == 16
    assert chat({"messages": msgs, "thinking": {"type": "disabled"}})["reasoning"]["enabled"] is False
    assert chat({"messages": msgs, "thinking": {"type": "adaptive"}})["reasoning"]["enabled"] is True
    assert "reasoning" not in chat({"messages": msgs})
    adaptive = chat({"messages": msgs, "thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}})
    assert (adaptive["reasoning"]["enabled"], adaptive["reasoning"]["effort"]) == (True, "low")
    assert chat({"messages": msgs, "thinking": {"type": "between_tools"}})["reasoning"]["enabled"] is True
    fmt = chat({"messages": msgs, "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}})
    assert fmt["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "json_schema": {"type": "object"}, "strict": True}}


def test_mid_conversation_system_message():
    c = chat({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": [{"type": "text", "text": "S"}]},
                           {"role": "user", "content": "b"}]})
    assert [m["role"] for m in c["messages"]] == ["user", "system", "user"] and c["messages"][1]["content"] == "S"


def test_count_tokens_body_needs_no_max_tokens():
    c = to_chat_request(CountTokensRequest.model_validate({"messages": [{"role": "user", "content": "x"}]}))
    assert c.max_tokens is None and c.messages is not None


@pytest.mark.parametrize("body, field", [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, "messages"),
])
def test_schema_errors_name_the_field(body, field):
    with pytest.raises(ValidationError) as err:
        MessagesRequest.model_validate(body)
    assert err.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("body, field", [
    ({"tools": [{"name": "w", "type": "web_search_20250305"}]}, "type"),
    ({"tools": [{"name": "w"}]}, "input_schema"),
    ({"tool_choice": {"type": "tool"}}, "name"),
    ({"thinking": {"type": "enabled"}}, "budget_tokens"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
])
def test_cross_field_errors_name_the_field(body, field):
    with pytest.raises(ValidationError) as err:
        MessagesRequest.model_validate({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **body})
    assert err.value.errors()[0]["ctx"]["error"].param == field


@pytest.mark.parametrize("body, field", [
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice.name"),
    ({"thinking": {"type": "enabled", "budget_tokens": 64}}, "thinking.budget_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]},
     "messages[0].content[0]"),
])
def test_translation_errors_name_the_field(body, field):
    req = MessagesRequest.model_validate({"max_tokens": 64, "messages": [{"role": "user", "content": "x"}], **body})
    with pytest.raises(FieldError) as err:
        to_chat_request(req)
    assert err.value.param == field


def test_stop_reason_and_error_envelope():
    assert [stop_reason(f, s) for f, s in [("stop", None), ("stop", "END"), ("length", None), ("tool_calls", None)]] == [
        "end_turn", "stop_sequence", "max_tokens", "tool_use"]
    assert error_body(400, "bad") == {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    assert [error_body(s, "")["error"]["type"] for s in (401, 403, 404, 413, 429, 500, 503)] == [
        "authentication_error", "permission_error", "not_found_error", "request_too_large", "rate_limit_error",
        "api_error", "overloaded_error"]


def test_whole_message():
    msg = {"content": "Hi", "reasoning": "think", "tool_calls": [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]}
    m = whole_message("gen-1", "model-x", msg, "tool_calls", None, CHAT_USAGE)
    assert m == {"id": "gen-1", "type": "message", "role": "assistant", "model": "model-x", "content": [
        {"type": "thinking", "thinking": "think", "signature": ""},
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Rome"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3,
                  "output_tokens": 4, "cost": 1.92e-06}}
    stopped = whole_message("gen-2", "m", {"content": "a"}, "stop", "END", CHAT_USAGE)
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "END")


def test_stream_events():
    ev = MessageEvents("gen-1", "model-x", 10)
    out = ev.start()
    for d in [{"reasoning": "a"}, {"reasoning": "b"}, {"content": "Hi"},
              {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}]:
        out += ev.feed(d)
    out += ev.finish("tool_calls", None, CHAT_USAGE)
    assert out == [
        {"type": "message_start", "message": {"id": "gen-1", "type": "message", "role": "assistant", "model": "model-x",
                                              "content": [], "stop_reason": None, "stop_sequence": None,
                                              "usage": {"input_tokens": 10, "cache_creation_input_tokens": 0,
                                                        "cache_read_input_tokens": 0, "output_tokens": 0}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "a"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "b"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"a":'}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "1}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 4, "cost": 1.92e-06}},
        {"type": "message_stop"},
    ]
