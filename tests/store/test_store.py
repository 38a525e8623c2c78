"""The store on SQLite and a real PostgreSQL: migrations, keys, generations, usage, activity, stats."""

from __future__ import annotations

import hashlib
from concurrent.futures import wait
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from gemmaserve.store import GenerationRecord, Outcome, Store, StoreOptions
from gemmaserve.store import queries
from gemmaserve.store.database import current_revision, downgrade, head_revision, migrate, open_engine
from gemmaserve.store.records import Content
from gemmaserve.store.schema import ApiKey

NOW = datetime(2026, 12, 9, 15, 30, tzinfo=timezone.utc)  # a Wednesday


def gen(i: int, when: datetime, key: str | None = "k" * 64, **kw) -> GenerationRecord:
    base = dict(id=f"gen-{i}", created_at=when, api_key_hash=key, model="google/gemma-4-26b-a4b-it",
                api_type="completions", provider_name="gemmaserve", tokens_prompt=10, tokens_completion=5,
                tokens_reasoning=2, total_cost=0.001, finish_reason="stop")
    base.update(kw)
    return GenerationRecord(**base)


def open_store(url: str, **opts) -> Store:
    engine = open_engine(url)
    migrate(engine)
    return Store(engine, StoreOptions(**opts))


def test_migrations_reach_head_idempotently(db_url):
    engine = open_engine(db_url)
    assert current_revision(engine) is None
    migrate(engine)
    migrate(engine)
    assert current_revision(engine) == head_revision() == "0002"
    downgrade(engine, "base")
    assert current_revision(engine) is None
    migrate(engine)
    with engine.connect() as c:
        assert c.execute(text("select count(*) from generations")).scalar() == 0
    engine.dispose()


def test_keys_persist_hashed_only(db_url):
    store = open_store(db_url)
    rec, plaintext = store.create_key("alice", limit=2.5, limit_reset="weekly",
                                      expires_at=NOW + timedelta(days=3))
    mgmt, _ = store.create_key("ops", is_management=True)
    assert rec.hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert rec.label.endswith(plaintext[-3:]) and plaintext not in rec.label
    store.update_key(rec.hash, disabled=True, name="alice2")
    store.close()

    store = open_store(db_url)
    got = store.keys[rec.hash]
    assert (got.name, got.disabled, got.limit, got.limit_reset) == ("alice2", True, 2.5, "weekly")
    assert got.expires_at == NOW + timedelta(days=3) and got.updated_at is not None
    assert [k.hash for k in store.list_keys(include_disabled=True)] == [rec.hash]
    assert store.list_keys() == []
    assert [k.hash for k in store.list_keys(management=True)] == [mgmt.hash]
    with store.session() as s:  # the plaintext is stored nowhere
        for row in s.scalars(select(ApiKey)):
            assert plaintext not in repr(vars(row))
    assert store.delete_key(rec.hash) and not store.delete_key(rec.hash)
    store.close()
    store = open_store(db_url)
    assert rec.hash not in store.keys
    store.close()


def test_usage_by_period_survives_restart(db_url):
    key = "a" * 64
    store = open_store(db_url)
    monday = datetime(2026, 12, 7, 0, 0, 1, tzinfo=timezone.utc)
    futures = [
        store.record_generation(gen(1, NOW, key, total_cost=0.5)),  # today
        store.record_generation(gen(2, monday, key, total_cost=0.25)),  # this week, not today
        store.record_generation(gen(3, monday - timedelta(seconds=2), key, total_cost=0.125)),  # Sunday: last week
        store.record_generation(gen(4, datetime(2026, 11, 30, tzinfo=timezone.utc), key, total_cost=1.0)),  # November
        store.record_generation(gen(5, NOW, "b" * 64, total_cost=7.0)),
    ]
    wait(futures)
    assert all(f.exception() is None for f in futures)
    u = store.ledger.usage(key, NOW)
    assert (u.total, u.daily, u.weekly, u.monthly) == (1.875, 0.5, 0.75, 0.875)
    store.close()
    store = open_store(db_url)
    sums = store.read(queries.key_usage_sums, NOW)[key]
    assert sums == {"total": 1.875, "daily": 0.5, "weekly": 0.75, "monthly": 0.875}
    assert store.read(queries.total_usage) == 8.875
    store.close()


def test_generation_and_content_round_trip(db_url):
    store = open_store(db_url, store_content=True)
    rec = gen(7, NOW, http_referer="https://app.example", app_title="Example", streamed=True,
              latency_ms=120, generation_time_ms=80, external_user="u1", session_id="s1")
    store.record_generation(rec, content=Content({"messages": [{"role": "user", "content": "hi"}]}, "hello", "think"))
    store.record_generation(gen(8, NOW), content=Content({"prompt": "x"}, "y")).result()
    assert store.generation("gen-7") == rec
    assert store.read(queries.content, "gen-7") == {
        "input": {"messages": [{"role": "user", "content": "hi"}]},
        "output": {"completion": "hello", "reasoning": "think"}, "error": None}
    assert store.generation("gen-none") is None
    store.close()
    store = open_store(db_url)  # content storage off: nothing kept
    store.record_generation(gen(9, NOW), content=Content({"prompt": "x"}, "y")).result()
    assert store.read(queries.content, "gen-9") is None
    store.close()


def test_activity_rows_per_day_model_endpoint(db_url):
    store = open_store(db_url)
    y = NOW - timedelta(days=1)
    rows = [gen(1, y, "a" * 64), gen(2, y, "b" * 64, tokens_prompt=20), gen(3, y, api_type="responses"),
            gen(4, y, model="other"), gen(5, NOW - timedelta(days=3)), gen(6, NOW),  # today: not completed
            gen(7, NOW - timedelta(days=31))]  # outside the 30 days
    wait([store.record_generation(r) for r in rows])
    got = store.read(queries.activity, NOW)
    assert [(r["date"], r["model"], r["api_type"], r["requests"], r["prompt_tokens"]) for r in got] == [
        ("2026-12-08", "google/gemma-4-26b-a4b-it", "completions", 2, 30),
        ("2026-12-08", "google/gemma-4-26b-a4b-it", "responses", 1, 10),
        ("2026-12-08", "other", "completions", 1, 10),
        ("2026-12-06", "google/gemma-4-26b-a4b-it", "completions", 1, 10),
    ]
    assert got[0]["completion_tokens"] == 10 and got[0]["reasoning_tokens"] == 4 and got[0]["usage"] == 0.002
    only_a = store.read(queries.activity, NOW, api_key_hash="a" * 64)
    assert [(r["date"], r["requests"]) for r in only_a] == [("2026-12-08", 1)]
    assert [r["date"] for r in store.read(queries.activity, NOW, date="2026-12-06")] == ["2026-12-06"]
    assert [(r["date"], r["requests"]) for r in store.read(queries.activity, NOW, date="2026-12-09")] == [
        ("2026-12-09", 1)]  # today, asked for by date
    store.close()


def test_endpoint_stats_follow_openrouter_rules(db_url):
    store = open_store(db_url, min_uptime_samples=4)
    t = NOW - timedelta(minutes=1)
    outcomes = [Outcome(t, 200, "stop", ttft_ms=ms, duration_ms=1000, tokens_completion=tok)
                for ms, tok in ((10, 10), (20, 20), (30, 30), (40, 40))]
    outcomes += [Outcome(t, 500), Outcome(t, 200, "error", ttft_ms=50, duration_ms=100, tokens_completion=1),
                 Outcome(t, 429), Outcome(t, 400), Outcome(t, 413),  # not counted
                 Outcome(NOW - timedelta(minutes=40), 401)]
    wait([store.record_outcome(o) for o in outcomes])
    stats = store.read(queries.endpoint_stats, NOW, 4)
    assert stats["uptime_last_5m"] == stats["uptime_last_30m"] == round(100 * 4 / 6, 2)
    assert stats["uptime_last_1d"] == round(100 * 4 / 7, 2)
    assert stats["latency_last_30m"] == {"p50": 30.0, "p75": 40.0, "p90": 50.0, "p99": 50.0}
    assert stats["throughput_last_30m"] == {"p50": 20.0, "p75": 30.0, "p90": 40.0, "p99": 40.0}
    assert store.read(queries.endpoint_stats, NOW, 100)["uptime_last_5m"] is None  # too little data
    hourly = store.read(queries.uptime_hourly, NOW, 72)
    assert len(hourly) == 72 and hourly[-1]["hour"] == "2026-12-09T15:00Z"
    assert (hourly[-1]["requests"], hourly[-1]["errors"]) == (6, 2) and hourly[-2]["requests"] == 1
    assert hourly[0]["uptime"] is None
    perf = store.read(queries.performance_hourly, NOW, 24)
    assert [p["hour"] for p in perf] == ["2026-12-09T15:00Z"]
    assert perf[0]["latency_p50"] == 30.0 and perf[0]["throughput_p50"] == 20.0
    store.close()


def test_model_page_series(db_url):
    store = open_store(db_url)
    wait([store.record_generation(g) for g in (
        gen(1, NOW, http_referer="https://a.example", app_title="A", tokens_prompt=100),
        gen(2, NOW - timedelta(days=1), http_referer="https://a.example", tokens_prompt=100),
        gen(3, NOW, http_referer="https://b.example", tokens_prompt=1),
        gen(4, NOW, app_title="title alone makes no app"),
        gen(5, NOW - timedelta(days=8)))])
    assert store.read(queries.top_apps, NOW) == [
        {"app": "A", "url": "https://a.example", "requests": 2, "tokens": 210},
        {"app": "https://b.example", "url": "https://b.example", "requests": 1, "tokens": 6}]
    days = store.read(queries.tokens_daily, NOW, 30)
    assert len(days) == 30 and days[-1] == {"date": "2026-12-09", "prompt_tokens": 111, "completion_tokens": 15,
                                            "reasoning_tokens": 6, "requests": 3}
    assert days[-2]["prompt_tokens"] == 100 and days[-9]["requests"] == 1
    assert store.read(queries.tokens_since, NOW - timedelta(days=7)) == 111 + 15 + 105
    store.close()


def test_writer_batches_concurrent_writes(db_url):
    store = open_store(db_url)
    futures = [store.record_generation(gen(i, NOW)) for i in range(300)]
    wait(futures)
    assert all(f.exception() is None for f in futures)
    assert store.writer.writes == 300 and store.writer.commits < 300
    # A bad write (duplicate id) fails alone; its batch neighbours still land.
    bad, good = store.record_generation(gen(0, NOW)), store.record_generation(gen(1000, NOW))
    wait([bad, good])
    assert bad.exception() is not None and good.exception() is None
    with store.session() as s:
        assert s.execute(text("select count(*) from generations")).scalar() == 301
    store.close()
