"""Response caching (X-OpenRouter-Cache*): the bounded store, the key, and a hit replayed on chat,
completions, Responses and Messages (whole and streamed) with a new gen- id, zero usage, no engine."""

from __future__ import annotations

import json

import httpx
import pytest

from gemmaserve.api.response_cache import Entry, ResponseCache, cache_key, directives

MODEL = "google/gemma-4-26b-a4b-it"
ON = {"X-OpenRouter-Cache": "true"}
BODIES = {
    "/api/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "/api/v1/completions": {"model": MODEL, "prompt": "hi"},
    "/api/v1/responses": {"model": MODEL, "input": "hi"},
    "/v1/messages": {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
}


def entry(size: int, at: float = 0.0, ttl: int = 300) -> Entry:
    return Entry(None, [b"x" * size], "gen-1-a", at, ttl)


def test_store_expires_and_stays_bounded():
    c = ResponseCache(max_entries=2, max_bytes=100)
    c.put("a", entry(10, at=0, ttl=5))
    assert c.get("a", now=4.9) is not None and c.get("a", now=5.0) is None and len(c) == 0
    c.put("a", entry(10))
    c.put("b", entry(10))
    c.get("a", now=1)  # a is now the most recently used
    c.put("c", entry(10))
    assert (c.get("a", now=1) is not None, c.get("b", now=1), len(c)) == (True, None, 2)
    c.put("d", entry(95))  # over the byte bound: the oldest go first
    assert len(c) == 1 and c.nbytes == 95
    c.put("e", entry(101))  # larger than the whole cache: not kept
    assert c.get("e", now=1) is None and c.nbytes == 95


def test_key_covers_each_component():
    base = ("k", "m", "/v1/chat/completions", False, b"{}")
    keys = {cache_key(*base)}
    for i, other in enumerate(["k2", "m2", "/v1/completions", True, b"{ }"]):
        keys.add(cache_key(*(base[:i] + (other,) + base[i + 1:])))
    assert len(keys) == 6


def test_directives():
    assert directives({}) is None and directives({"x-openrouter-cache": "false"}) is None
    d = directives({"x-openrouter-cache": "true", "x-openrouter-cache-ttl": "60", "x-openrouter-cache-clear": "true"})
    assert (d.ttl_s, d.clear) == (60, True)
    assert directives({"x-openrouter-cache": "true"}).ttl_s == 300


def _post(fake, path, body, stream=False, headers=ON):
    url = fake.root + path
    if not stream:
        return httpx.post(url, json=body, headers=headers)
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers) as r:
        r.read()
    return r


def _usage_numbers(obj) -> list:
    """Every number found under a `usage` key."""
    found = []

    def walk(o, inside):
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, inside or k == "usage")
        elif isinstance(o, list):
            for v in o:
                walk(v, inside)
        elif inside and isinstance(o, (int, float)) and not isinstance(o, bool):
            found.append(o)
    walk(obj, False)
    return found


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("stream", [False, True])
def test_hit_replays_with_new_id_and_zero_usage(fake, path, stream):
    body = {**BODIES[path], "temperature": 0.25 if stream else 0.5}
    first = _post(fake, path, body, stream)
    calls = len(fake.engine.calls)
    assert first.status_code == 200 and first.headers["X-OpenRouter-Cache-Status"] == "MISS"
    assert first.headers["X-OpenRouter-Cache-TTL"] == "300"
    second = _post(fake, path, body, stream)
    assert second.status_code == 200 and len(fake.engine.calls) == calls  # the engine never saw it
    h = second.headers
    assert (h["X-OpenRouter-Cache-Status"], h["X-OpenRouter-Cache-TTL"], int(h["X-OpenRouter-Cache-Age"])) == ("HIT", "300", 0)
    old_id, new_id = first.headers["X-Generation-Id"], h["X-Generation-Id"]
    assert new_id != old_id and new_id.startswith("gen-")
    if stream:
        assert old_id not in second.text and new_id in second.text
        first_text = first.text.replace(old_id, new_id)
        datas = [json.loads(line[6:]) for line in second.text.split("\n") if line.startswith("data: {")]
        assert datas and all(n == 0 for d in datas for n in _usage_numbers(d))
        assert any(_usage_numbers(json.loads(line[6:])) and any(_usage_numbers(json.loads(line[6:])))
                   for line in first_text.split("\n") if line.startswith("data: {"))
    else:
        a, b = first.json(), second.json()
        assert b["id"] == new_id and a["id"] == old_id
        assert any(_usage_numbers(a)) and all(n == 0 for n in _usage_numbers(b))
        a.pop("usage"), b.pop("usage")
        a["id"] = b["id"]
        for d in (a, b):
            d.pop("created_at", None), d.pop("completed_at", None)
        assert a == b


def test_key_separates_stream_body_and_uncached_requests(fake):
    path, body = "/api/v1/chat/completions", {**BODIES["/api/v1/chat/completions"], "seed": 11}
    _post(fake, path, body)
    n = len(fake.engine.calls)
    assert _post(fake, path, body, stream=True).headers["X-OpenRouter-Cache-Status"] == "MISS"
    assert _post(fake, path, {**body, "seed": 12}).headers["X-OpenRouter-Cache-Status"] == "MISS"
    plain = _post(fake, path, body, headers={})
    assert "X-OpenRouter-Cache-Status" not in plain.headers and len(fake.engine.calls) == n + 3
    # /v1 and /api/v1 are the same endpoint.
    assert _post(fake, "/v1/chat/completions", body).headers["X-OpenRouter-Cache-Status"] == "HIT"


def test_ttl_clear_and_failures_are_not_cached(fake):
    path, body = "/api/v1/chat/completions", {**BODIES["/api/v1/chat/completions"], "seed": 21}
    r = _post(fake, path, body, headers={**ON, "X-OpenRouter-Cache-TTL": "60"})
    assert r.headers["X-OpenRouter-Cache-TTL"] == "60"
    assert _post(fake, path, body).headers["X-OpenRouter-Cache-Status"] == "HIT"
    cleared = _post(fake, path, body, headers={**ON, "X-OpenRouter-Cache-Clear": "true"})
    assert cleared.headers["X-OpenRouter-Cache-Status"] == "MISS"
    fake.engine.fail_after = 2
    body2 = {**body, "seed": 22}
    _post(fake, path, body2)
    assert _post(fake, path, body2).headers["X-OpenRouter-Cache-Status"] == "MISS"
    bad = _post(fake, path, body, headers={**ON, "X-OpenRouter-Cache-TTL": "0"})
    assert bad.status_code == 400 and bad.json()["error"]["metadata"]["param"] == "X-OpenRouter-Cache-TTL"
