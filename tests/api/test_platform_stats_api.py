"""Activity, attribution, /generation from the store, live endpoint stats, the page's series;
all read back after a restart."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from platform_support import bearer, chat, platform_server, wait_for_outcomes

from gemmaserve.store import GenerationRecord, StoreOptions

ENDPOINTS = "/models/google/gemma-4-26b-a4b-it/endpoints"


def make_traffic(s) -> tuple[str, str, list[str]]:
    created = s.mgmt.post("/keys", json={"name": "app", "rate_limit_rpm": 50}).json()
    key, h = created["key"], created["data"]["hash"]
    ids = []
    for i in range(4):
        r = httpx.post(f"{s.url}/chat/completions", timeout=30, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": i % 2 == 1},
            headers={**bearer(key), "HTTP-Referer": "https://notes.example", "X-OpenRouter-Title": "Notes"})
        assert r.status_code == 200
        ids.append(r.headers["x-generation-id"])
        if i == 0:
            s.first_answer = r.json()["choices"][0]["message"]["content"]
    r = httpx.post(f"{s.url}/chat/completions", timeout=30, headers={**bearer(key), "X-Title": "Old header app",
                   "HTTP-Referer": "https://old.example"}, json={"messages": [{"role": "user", "content": "x"}]})
    ids.append(r.headers["x-generation-id"])
    assert chat(s, "sk-wrong-key-000000").status_code == 401  # counts against uptime
    assert chat(s, key, model="nope/nope").status_code == 404  # counts against uptime
    assert chat(s, key, temperature=9).status_code == 400  # not counted
    return key, h, ids


def test_stats_activity_and_attribution_survive_restart(demo_tokenizer, tmp_path):
    opts = StoreOptions(min_uptime_samples=1, store_content=True)
    with platform_server(demo_tokenizer, tmp_path, options=opts) as s:
        s.engine.step_delay = 0.01  # generation takes measurable milliseconds (throughput)
        key, h, ids = make_traffic(s)
        first_answer = s.first_answer
        wait_for_outcomes(s.store, 8)
        yesterday = datetime.now(timezone.utc) - timedelta(days=1)
        s.store.record_generation(GenerationRecord(
            id="gen-yesterday", created_at=yesterday, api_key_hash=h, model="google/gemma-4-26b-a4b-it-20260403",
            api_type="completions", provider_name="gemmaserve", tokens_prompt=7, tokens_completion=3,
            tokens_reasoning=1, total_cost=0.5)).result()
        live = httpx.get(s.url + ENDPOINTS).json()["data"]["endpoints"][0]
        page = httpx.get(s.root + "/api/frontend/stats").json()
        rec = httpx.get(f"{s.url}/generation", params={"id": ids[0]}, headers=bearer(key)).json()["data"]
        content = httpx.get(f"{s.url}/generation/content", params={"id": ids[0]}, headers=bearer(key))

    # Uptime: 5 successes, 2 errors (401, 404); the 400 is not counted.
    assert live["uptime_last_5m"] == live["uptime_last_30m"] == live["uptime_last_1d"] == round(100 * 5 / 7, 2)
    assert set(live["latency_last_30m"]) == {"p50", "p75", "p90", "p99"}
    assert 0 <= live["latency_last_30m"]["p50"] <= live["latency_last_30m"]["p99"]
    assert live["throughput_last_30m"]["p50"] > 0
    assert rec["http_referer"] == "https://notes.example" and rec["app_title"] == "Notes"
    assert rec["api_type"] == "completions" and rec["streamed"] is False and rec["tokens_completion"] > 0
    assert content.status_code == 200
    got = content.json()["data"]
    assert got["output"]["completion"] == first_answer and "hi" in got["input"]["prompt"]
    apps = {a["url"]: a for a in page["apps"]}
    assert apps["https://notes.example"]["app"] == "Notes" and apps["https://notes.example"]["requests"] == 4
    assert apps["https://old.example"]["app"] == "Old header app"
    assert page["tokens_daily"][-1]["requests"] == 5 and page["tokens_daily"][-2]["prompt_tokens"] == 7

    with platform_server(demo_tokenizer, tmp_path, options=opts) as s:
        again = httpx.get(s.url + ENDPOINTS).json()["data"]["endpoints"][0]
        for field in ("uptime_last_5m", "uptime_last_30m", "uptime_last_1d", "latency_last_30m", "throughput_last_30m"):
            assert again[field] == live[field], field
        assert httpx.get(f"{s.url}/generation", params={"id": ids[0]}, headers=bearer(key)).json()["data"] == rec
        # Another key cannot read this key's generation.
        other = s.mgmt.post("/keys", json={"name": "other"}).json()["key"]
        assert httpx.get(f"{s.url}/generation", params={"id": ids[0]}, headers=bearer(other)).status_code == 404

        act = s.mgmt.get("/activity").json()["data"]
        assert [(r["date"], r["requests"], r["prompt_tokens"], r["completion_tokens"], r["reasoning_tokens"])
                for r in act] == [(yesterday.strftime("%Y-%m-%d"), 1, 7, 3, 1)]
        assert act[0]["usage"] == 0.5 and act[0]["provider_name"] == "gemmaserve"
        assert act[0]["model_permaslug"] == "google/gemma-4-26b-a4b-it-20260403"
        today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        todays = s.mgmt.get("/activity", params={"date": today, "api_key_hash": h}).json()["data"]
        assert sum(r["requests"] for r in todays) == 5
        assert s.mgmt.get("/activity", params={"api_key_hash": "0" * 64}).json()["data"] == []
        assert s.mgmt.get("/activity", params={"date": "yesterday"}).status_code == 400
        assert httpx.get(f"{s.url}/activity", headers=bearer(key)).status_code == 403


def test_content_is_not_kept_unless_asked(demo_tokenizer, tmp_path):
    with platform_server(demo_tokenizer, tmp_path) as s:
        key = s.mgmt.post("/keys", json={"name": "k"}).json()["key"]
        gen_id = chat(s, key, max_tokens=2).headers["x-generation-id"]
        r = httpx.get(f"{s.url}/generation/content", params={"id": gen_id}, headers=bearer(key))
        assert r.status_code == 404 and "store-content" in r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/", "/google/gemma-4-26b-a4b-it", "/keys"])
def test_pages_are_served(demo_tokenizer, tmp_path, path):
    with platform_server(demo_tokenizer, tmp_path) as s:
        r = httpx.get(s.root + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert httpx.get(s.root + "/static/chart.umd.min.js").status_code == 200
        assert httpx.get(s.root + "/nobody/nothing").status_code == 404
