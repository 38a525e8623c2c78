"""Issue 17's hostile classes as named regression cases: each body once gave a 500, a stall or a
wrong status; now each gets its documented status and OpenRouter's error body naming the field."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from benchmarks.suite.hostile import nested_args, nested_schema

MODEL = "google/gemma-4-26b-a4b-it"
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def roomy(demo_tokenizer):
    """A fake-engine server with an 8k context and the default 8 MiB body limit."""
    from api_support import FakeEngine, ServerThread, make_state

    from gemmaserve.api.app import create_app

    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size, max_model_len=8192)
    with ServerThread(create_app(make_state(demo_tokenizer, engine))) as srv:
        srv.engine = engine
        yield srv


def post_raw(srv, path: str, raw: str) -> httpx.Response:
    """Send JSON text as is: `\\ud800` escapes reach the server as lone surrogates."""
    return httpx.post(srv.url + path, content=raw.encode("ascii"), headers={"content-type": "application/json"},
                      timeout=60)


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and isinstance(err["message"], str)
    assert "Traceback" not in err["message"] and "panic" not in err["message"]
    if param is not None:
        assert err["metadata"]["param"] == param, err
    return err


# -- 1a: lone surrogates ---------------------------------------------------------------------------

@pytest.mark.parametrize("path, raw, param", [
    ("/chat/completions", '{"model":"%s","messages":[{"role":"user","content":"a\\ud800b"}]}' % MODEL,
     "messages[0].content"),
    ("/completions", '{"model":"%s","prompt":"a\\ud800b"}' % MODEL, "prompt"),
    ("/chat/completions", '{"model":"%s","messages":[{"role":"user","content":"x","name":"n\\udc00"}]}' % MODEL,
     "messages[0].name"),
    ("/chat/completions", '{"model":"%s","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function",'
     '"function":{"name":"f","description":"d\\ud800"}}]}' % MODEL, "tools[0].function.description"),
    ("/chat/completions", '{"model":"%s","messages":[{"role":"user","content":"x"}],"response_format":{"type":'
     '"json_schema","json_schema":{"name":"r","schema":{"const":"\\udfff"}}}}' % MODEL,
     "response_format.json_schema.schema.const"),
])
def test_lone_surrogate_is_a_400_naming_the_field(fake, path, raw, param):
    err = assert_error(post_raw(fake, path, raw), 400, param)
    assert "surrogate" in err["message"]
    assert not fake.engine.calls


def test_unknown_model_with_a_surrogate_is_a_404(fake):
    r = post_raw(fake, "/chat/completions", '{"model":"x\\ud800","messages":[{"role":"user","content":"x"}]}')
    err = assert_error(r, 404, "model")
    assert err["message"] == "x\ud800 is not a valid model ID"  # the JSON escape round-trips


# -- 1b: nesting -----------------------------------------------------------------------------------

def test_deep_tool_parameters_are_a_400_not_a_recursion_error(fake):
    body = {"model": MODEL, "messages": USER, "tool_choice": "auto",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": nested_schema(98)}}]}
    err = assert_error(httpx.post(fake.url + "/chat/completions", json=body, timeout=60), 400)
    assert err["metadata"]["param"].startswith("tools[0].function.parameters") and "deeper" in err["message"]


def test_deep_json_schema_is_a_400(fake):
    body = {"model": MODEL, "messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "r", "schema": nested_schema(247)}}}
    err = assert_error(httpx.post(fake.url + "/chat/completions", json=body, timeout=60), 400)
    assert err["metadata"]["param"].startswith("response_format.json_schema.schema")


def test_deep_tool_call_arguments_are_a_400(fake):
    msgs = USER + [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": nested_args(197)}}]}, {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    err = assert_error(httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": msgs}), 400)
    assert err["metadata"]["param"].endswith("tool_calls[0].function.arguments")


def test_nesting_just_under_the_cap_renders_and_compiles(roomy):
    """What the cap lets through, the template and the grammar compiler handle (no RecursionError)."""
    fake = roomy
    tools = [{"type": "function", "function": {"name": "f", "parameters": nested_schema(28)}}]
    r = httpx.post(fake.url + "/chat/completions", timeout=60, json={
        "model": MODEL, "messages": USER, "tools": tools, "tool_choice": "required"})
    assert r.status_code == 200, r.text
    msgs = USER + [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": nested_args(60)}}]}, {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    assert httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": msgs}).status_code == 200


# -- 2, 3: size caps before expensive work ---------------------------------------------------------

def test_prompt_beyond_any_fit_is_the_context_400(demo_tokenizer):
    from api_support import FakeEngine, ServerThread, make_state

    from gemmaserve.api.app import create_app

    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    with ServerThread(create_app(make_state(demo_tokenizer, engine))) as srv:
        for path, body in (("/completions", {"prompt": "hello world " * 200_000}),
                           ("/chat/completions", {"messages": [{"role": "user", "content": "hello " * 400_000}]})):
            r = httpx.post(srv.url + path, json={"model": MODEL, **body}, timeout=60)
            err = assert_error(r, 400)
            assert err["metadata"]["error_type"] == "context_length_exceeded" and "more than" in err["message"]
        assert not engine.calls
        # middle-out keeps a prompt's ends instead, without tokenizing the whole middle.
        r = httpx.post(srv.url + "/completions", timeout=60, json={
            "model": MODEL, "prompt": "a " * 1_000_000, "transforms": ["middle-out"], "max_tokens": 1})
        assert r.status_code == 200, r.text
        assert len(engine.calls[-1].prompt_ids) == engine.max_model_len - 1


def test_huge_enum_is_refused_before_compiling(roomy):
    fake = roomy
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "enum": [f"v{i}" for i in range(20_000)]}}}}}]
    t = time.monotonic()
    r = httpx.post(fake.url + "/chat/completions", timeout=60, json={
        "model": MODEL, "messages": USER, "tools": tools, "tool_choice": "required"})
    err = assert_error(r, 400, "tools")
    assert "too large" in err["message"] and time.monotonic() - t < 10


def test_grammar_engine_panic_text_is_never_shown():
    from gemmaserve.structured.compiler import _user_message

    raw = "panic: assertion failed: grammar.symbols.len() < u16::MAX as usize - 10 <backtrace> 0: <unknown>"
    assert _user_message(raw) == "the grammar is too large or complex to compile"


# -- 4: float precision ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("repetition_penalty", 1e-300), ("repetition_penalty", 1e-35), ("top_p", 1e-300), ("min_p", 1e-45),
    ("temperature", 1e-320), ("frequency_penalty", -1e-300), ("top_a", 1e-40),
])
def test_float_that_collapses_in_float32_is_a_400(fake, field, value):
    body = {"model": MODEL, "messages": USER, field: value}
    err = assert_error(httpx.post(fake.url + "/chat/completions", json=body), 400, field)
    assert "float32" in err["message"]
    assert not fake.engine.calls


def test_logit_bias_value_is_checked_in_float32_too(fake):
    r = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": USER, "logit_bias": {"5": 1e-300}})
    assert_error(r, 400, "logit_bias[5]")


def test_representable_floats_still_pass(fake):
    r = httpx.post(fake.url + "/chat/completions", json={
        "model": MODEL, "messages": USER, "repetition_penalty": 1e-6, "top_p": 1e-6, "temperature": 0})
    assert r.status_code == 200, r.text
    assert fake.engine.calls[-1].params.repetition_penalty == 1e-6


# -- 6: contract gaps ------------------------------------------------------------------------------

def test_grammar_allowing_only_suppressed_tokens_is_a_400(fake):
    r = httpx.post(fake.url + "/chat/completions", json={
        "model": MODEL, "messages": USER, "response_format": {"type": "grammar", "grammar": 'start: "<pad>"'}})
    err = assert_error(r, 400, "response_format.grammar")
    assert "never generates" in err["message"] and not fake.engine.calls


def test_top_p_zero_names_its_param(fake):
    assert_error(httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": USER, "top_p": 0}),
                 400, "top_p")


def test_unknown_models_list_is_not_echoed_whole(fake):
    r = httpx.post(fake.url + "/chat/completions", timeout=60, json={
        "models": [f"m{i}" for i in range(5000)], "messages": USER})
    err = assert_error(r, 404, "models")
    assert err["message"] == "None of the requested models is served here: m0, m1, m2, m3, m4 (and 4995 more)"


@pytest.mark.parametrize("field, value", [("max_tokens", True), ("max_tokens", 2.0), ("max_tokens", "2"),
                                          ("top_k", True), ("seed", False), ("temperature", True)])
def test_booleans_and_strings_are_not_numbers(fake, field, value):
    assert_error(httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": USER, field: value}),
                 400, field)


def test_booleans_are_not_token_ids(fake):
    assert_error(httpx.post(fake.url + "/completions", json={"model": MODEL, "prompt": [True, 5]}), 400)


def test_error_bodies_are_ascii_json(fake):
    r = post_raw(fake, "/chat/completions", '{"model":"\\u00e9\\ud800","messages":[]}')
    assert r.status_code in (400, 404)
    r.content.decode("ascii")  # every non-ASCII character escaped, surrogates included
    json.loads(r.content)


def test_translation_that_yields_an_invalid_chat_request_is_a_400(fake):
    """Found by the fuzz suite: an Anthropic user turn with empty content left a chat request with no
    messages, whose validation error escaped as a 500. Now the Messages API's own 400."""
    r = httpx.post(fake.root + "/v1/messages", json={"model": MODEL, "max_tokens": 5,
                                                      "messages": [{"role": "user", "content": []}]})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
