"""Error bodies and statuses: validation, engine errors, auth, body size, and a fuzz pass (no 5xx)."""

from __future__ import annotations

import json
import random

import httpx
import openai
import pytest
from api_support import API_KEY

from gemmaserve.types import EngineDeadError, InvalidRequestError, PromptTooLongError, QueueFullError

MODEL = "google/gemma-4-26b-a4b-it"
MSGS = [{"role": "user", "content": "Hi"}]


def post(srv, body, path="/chat/completions", **kw):
    return httpx.post(srv.url + path, json=body, timeout=30, **kw)


def assert_envelope(r, status, error_type=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert err["code"] == status and isinstance(err["message"], str) and err["message"]
    if error_type:
        assert err["metadata"]["error_type"] == error_type
    return err


@pytest.mark.parametrize("patch, field", [
    ({"temperature": 3}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"presence_penalty": 9}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_p": 2}, "min_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -5}, "max_completion_tokens"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "grammar", "grammar": "root ::= x"}}, "response_format"),  # x undefined
    ({"response_format": {"type": "grammar"}}, "response_format"),
    ({"response_format": {"type": "python"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"seed": "abc"}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"stop": ["ok", ""]}, "stop"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"modalities": ["text", "image"]}, "modalities"),
    # OpenRouter features this endpoint cannot provide are refused, not silently dropped.
    ({"plugins": [{"id": "web"}]}, "plugins"),
    ({"plugins": [{"id": "context-compression", "engine": "llm-summary"}]}, "plugins"),
    ({"plugins": [{"enabled": True}]}, "plugins"),
    ({"transforms": ["middle-out", "squash"]}, "transforms"),
    ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
])
def test_bad_fields_are_400_naming_the_field(fake, patch, field):
    err = assert_envelope(post(fake, {"model": MODEL, "messages": MSGS, **patch}), 400, "invalid_request")
    assert field in err["message"]
    assert field in err["metadata"]["param"]
    assert "Value error" not in err["message"]  # pydantic's prefix is noise to a client


@pytest.mark.parametrize("patch, param", [
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"reasoning": {"effort": "high"}, "reasoning_effort": "low"}, "reasoning_effort"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
    ({"messages": None}, "messages"),
])
def test_cross_field_errors_name_their_param(fake, patch, param):
    err = assert_envelope(post(fake, {"model": MODEL, "messages": MSGS, **patch}), 400, "invalid_request")
    assert err["metadata"]["param"] == param and err["message"].startswith(f"Invalid value for '{param}': ")


@pytest.mark.parametrize("patch, field", [
    ({"suffix": "tail"}, "suffix"),
    ({"best_of": 2}, "best_of"),
    ({"plugins": [{"id": "web"}]}, "plugins"),
    ({"top_a": 1.5}, "top_a"),
    ({"response_format": {"type": "python"}}, "response_format"),
])
def test_legacy_completion_refusals_name_the_field(fake, patch, field):
    err = assert_envelope(post(fake, {"model": MODEL, "prompt": "Hi", **patch}, path="/completions"), 400)
    assert err["metadata"]["param"] == field


@pytest.mark.parametrize("patch, words", [
    ({"top_logprobs": 2}, "top_logprobs requires logprobs"),
    ({"reasoning": {"effort": "high"}, "reasoning_effort": "low"}, "disagree"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "disagree"),
    ({"tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "'g'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}}, "schema"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "image"),
])
def test_semantic_errors_are_400(fake, patch, words):
    err = assert_envelope(post(fake, {"model": MODEL, "messages": MSGS, **patch}), 400)
    assert words in err["message"]


def test_unknown_and_ignored_fields_are_accepted(fake):
    # Documented as ignored or as routing hints, or plugins that are off or need nothing here.
    body = {"model": MODEL, "messages": MSGS, "n": 3, "transforms": ["middle-out"], "usage": {"include": True},
            "provider": {"order": ["x"]}, "verbosity": "low", "frobnicate": {"a": [1]},
            "plugins": [{"id": "web", "enabled": False}, {"id": "response-healing"}],
            "stream_options": {"include_usage": False}, "metadata": {"k": "v"}, "route": "fallback",
            "service_tier": "auto", "prediction": {"type": "content", "content": "x"}, "cache_control": {"type": "x"},
            "trace": {"trace_id": "t"}, "prompt_cache_key": "k", "structured_outputs": True}
    r = post(fake, body)
    assert r.status_code == 200 and len(r.json()["choices"]) == 1


@pytest.mark.parametrize("exc, status, etype", [
    (QueueFullError("full"), 429, "rate_limit_exceeded"),
    (PromptTooLongError(600, 512, 10), 400, "context_length_exceeded"),
    (InvalidRequestError("bad token id 9999"), 400, "invalid_request"),
    (EngineDeadError("gone"), 503, "provider_unavailable"),
    (RuntimeError("boom"), 500, "server"),
])
def test_engine_errors_map_to_statuses(fake, exc, status, etype):
    fake.engine.submit_error = exc
    for stream in (False, True):
        err = assert_envelope(post(fake, {"model": MODEL, "messages": MSGS, "stream": stream}), status, etype)
        if status == 500:
            assert err["message"] == "Internal Server Error"  # masked: no trace, no internals
    if isinstance(exc, PromptTooLongError):
        assert err["message"] == str(exc)


def test_not_ready_is_503(fake):
    fake.engine.ready = False
    r = post(fake, {"model": MODEL, "messages": MSGS})
    assert_envelope(r, 503)
    assert httpx.get(fake.root + "/health").status_code == 503


def test_body_too_large_is_413_before_parsing(fake):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (70 * 1024) + b'"}]}'
    r = httpx.post(fake.url + "/chat/completions", content=big, headers={"content-type": "application/json"})
    assert_envelope(r, 413, "payload_too_large")
    # Without a content-length (chunked upload) the limit still holds.
    r = httpx.post(fake.url + "/chat/completions", content=iter([big[:40000], big[40000:]]),
                   headers={"content-type": "application/json"})
    assert_envelope(r, 413, "payload_too_large")


def test_fuzz_never_5xx_and_server_survives(fake):
    rng = random.Random(1234)
    good = {"model": MODEL, "messages": MSGS, "max_tokens": 50}
    values = [None, True, -1, 0, 1e308, -1e308, "", "x" * 300, [], {}, [1, "a"], {"a": None}, 3.5, "NaN"]
    bodies: list[bytes] = [b"", b"{", b"[]", b"null", b"42", b'"str"', b"{'a': 1}", b'{"messages": ',
                           b"\xff\xfe\x00", b'{"messages": [null]}', b'{"messages": [{"role": "user"}]}',
                           b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}',
                           b'{"messages": "hi"}', b'{"temperature": NaN, "messages": []}']
    keys = list(good) + ["temperature", "top_p", "stop", "tools", "tool_choice", "reasoning", "response_format",
                         "logit_bias", "logprobs", "top_logprobs", "seed", "stream", "n", "provider", "prompt"]
    for _ in range(60):
        body = dict(good)
        for _ in range(rng.randint(1, 3)):
            body[rng.choice(keys)] = rng.choice(values)
        bodies.append(json.dumps(body).encode())
    http = httpx.Client(timeout=30)
    for path in ("/chat/completions", "/completions"):
        for raw in bodies:
            r = http.post(fake.url + path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code < 500, (raw[:200], r.status_code, r.text[:300])
            if r.status_code >= 400:
                assert r.json()["error"]["code"] == r.status_code
            elif r.headers["content-type"].startswith("text/event-stream"):
                assert r.text.endswith("data: [DONE]\n\n")
    r = post(fake, good)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello world!"


def test_unknown_route_and_method(fake):
    assert_envelope(httpx.get(fake.url + "/nope"), 404, "not_found")
    assert_envelope(httpx.get(fake.url + "/chat/completions"), 405)


# --- auth ---------------------------------------------------------------------------------------

def test_missing_and_bad_keys_are_401(auth_server):
    r = post(auth_server, {"messages": MSGS})
    assert r.status_code == 401 and r.json() == {"error": {"code": 401, "message": "No auth credentials found",
                                                           "metadata": {"error_type": "authentication"}}}
    r = post(auth_server, {"messages": MSGS}, headers={"Authorization": "Bearer sk-wrong"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "User not found."
    r = httpx.get(auth_server.url + "/generation", params={"id": "gen-1"})
    assert r.status_code == 401


def test_good_key_and_served_name(auth_server):
    client = openai.OpenAI(base_url=auth_server.url, api_key=API_KEY, max_retries=0)
    resp = client.chat.completions.create(model="my-gemma", messages=MSGS)
    assert resp.model == "my-gemma" and resp.choices[0].message.content == "Hello world!"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=auth_server.url, api_key="sk-nope", max_retries=0).chat.completions.create(
            model="my-gemma", messages=MSGS)
    r = httpx.get(auth_server.url + "/key", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.json()["data"]["label"] == "sk-test-...789"
    assert r.json()["data"]["limit"] is None
    assert httpx.get(auth_server.url + "/key").status_code == 401
    # /models needs no key (as on OpenRouter) and lists the served name.
    r = httpx.get(auth_server.url + "/models")
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "my-gemma"


def test_a_registered_error_envelope_shapes_every_error_under_its_paths(demo_tokenizer):
    """An endpoint family with its own envelope (Anthropic's) registers it once; the skeleton and
    the app's handlers then write every error under its paths in that shape, others unchanged."""
    from api_support import FakeEngine, ServerThread, make_state

    from gemmaserve.api.app import create_app
    from gemmaserve.api.errors import register_error_envelope

    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    app = create_app(make_state(demo_tokenizer, engine))
    register_error_envelope(app, "/v1/", lambda err: {"type": "error", "error": {"type": err.error_type,
                                                                                  "message": err.message}})
    with ServerThread(app) as srv:
        r = httpx.post(srv.root + "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 404
        assert r.json() == {"type": "error", "error": {"type": "not_found", "message": "nope is not a valid model ID"}}
        r = httpx.post(srv.root + "/v1/chat/completions", json={"messages": []})
        assert r.status_code == 400 and r.json()["type"] == "error"
        r = httpx.post(srv.root + "/api/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 404 and r.json()["error"]["code"] == 404
