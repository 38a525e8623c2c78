"""Limits without overspending: pre-flight reservations (402), charges at the end, reservations
released on every exit path, per-key rate limits (429), zero-completion insurance."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from platform_support import bearer, chat, platform_server

from gemmaserve.types import QueueFullError

# PRICES: $0.001 per prompt token, $0.01 per completion token.


@pytest.fixture
def srv(demo_tokenizer, tmp_path):
    with platform_server(demo_tokenizer, tmp_path) as s:
        yield s


def new_key(srv, **fields) -> tuple[str, str]:
    r = srv.mgmt.post("/keys", json={"name": "k", **fields})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["data"]["hash"]


def prompt_tokens(srv) -> int:
    return len(srv.engine.calls[-1].prompt_ids)


def test_preflight_402_names_what_the_key_can_afford(srv):
    key, h = new_key(srv, limit=0.05)
    assert chat(srv, key, max_tokens=1).status_code == 200
    p = prompt_tokens(srv)
    remaining = 0.05 - (p * 0.001 + 1 * 0.01)
    r = chat(srv, key, max_tokens=100)
    assert r.status_code == 402
    err = r.json()["error"]
    affordable = int((remaining - p * 0.001) / 0.01 + 1e-9)
    assert err["message"].startswith(
        f"This request requires more credits, or fewer max_tokens. You requested up to 100 tokens, "
        f"but can only afford {affordable}.")
    assert err["metadata"]["error_type"] == "payment_required"
    assert srv.store.ledger.reserved(h) == 0
    # Without max_tokens the worst case is everything that fits after the prompt.
    r = chat(srv, key)
    assert r.status_code == 402 and f"up to {512 - p} tokens" in r.json()["error"]["message"]


def test_64_concurrent_requests_never_overspend(srv):
    srv.engine.script = ["a", "b", "c", "d"]
    srv.engine.step_delay = 0.01
    key, h = new_key(srv, limit=0.5)

    async def one(client):
        return await client.post(f"{srv.url}/chat/completions", headers=bearer(key), json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": False})

    async def burst():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(one(client) for _ in range(64)))

    replies = asyncio.run(burst())
    statuses = [r.status_code for r in replies]
    ok = [r for r in replies if r.status_code == 200]
    assert set(statuses) == {200, 402} and 0 < len(ok) < 64
    charged = sum(r.json()["usage"]["cost"] for r in ok)
    info = httpx.get(f"{srv.url}/key", headers=bearer(key)).json()["data"]
    assert info["usage"] == pytest.approx(charged) and info["usage"] <= 0.5
    assert info["limit_remaining"] >= 0
    assert srv.store.ledger.reserved(h) == 0  # every reservation charged or released
    # Each success reserved its worst case (8 completion tokens), so at most floor(0.5 / max) ran.
    worst = prompt_tokens(srv) * 0.001 + 8 * 0.01
    assert len(ok) <= int(0.5 / worst + 1e-9)


def test_reservations_released_on_every_exit_path(srv):
    key, h = new_key(srv, limit=10)
    srv.engine.submit_error = QueueFullError("full")
    assert chat(srv, key, max_tokens=4).status_code == 429
    assert chat(srv, key, max_tokens=4, stream=True).status_code == 429
    srv.engine.submit_error = None
    assert srv.store.ledger.reserved(h) == 0
    # Client gone mid-stream: the engine request is aborted and the reservation released.
    srv.engine.script, srv.engine.step_delay = ["x"] * 50, 0.05
    with httpx.stream("POST", f"{srv.url}/chat/completions", headers=bearer(key), timeout=30, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break
    deadline = time.monotonic() + 10
    while srv.store.ledger.reserved(h) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.store.ledger.reserved(h) == 0
    usage = httpx.get(f"{srv.url}/key", headers=bearer(key)).json()["data"]["usage"]
    assert usage > 0  # what was generated before the client left is charged


def test_zero_completion_insurance(srv):
    key, h = new_key(srv)
    srv.engine.fail_after = 0  # the engine fails before any token
    srv.engine.script = [""]
    r = chat(srv, key, max_tokens=4)
    srv.engine.fail_after = None
    gen_id = r.headers["x-generation-id"]
    info = httpx.get(f"{srv.url}/key", headers=bearer(key)).json()["data"]
    assert info["usage"] == 0
    rec = httpx.get(f"{srv.url}/generation", params={"id": gen_id}, headers=bearer(key)).json()["data"]
    assert rec["total_cost"] == 0 and rec["tokens_completion"] == 0 and rec["finish_reason"] == "error"


def test_rate_limit_per_minute_answers_openrouter_429(srv):
    key, _ = new_key(srv, rate_limit_rpm=2)
    assert [chat(srv, key, max_tokens=1).status_code for _ in range(2)] == [200, 200]
    before = time.time()
    r = chat(srv, key, max_tokens=1)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == 429 and r.json()["error"]["metadata"]["error_type"] == "rate_limit_exceeded"
    assert r.headers["X-RateLimit-Limit"] == "2" and r.headers["X-RateLimit-Remaining"] == "0"
    reset_ms = int(r.headers["X-RateLimit-Reset"])
    assert before * 1000 < reset_ms <= (time.time() + 60) * 1000
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    other, _ = new_key(srv)
    assert chat(srv, other, max_tokens=1).status_code == 200  # limits are per key
