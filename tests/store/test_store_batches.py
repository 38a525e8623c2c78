"""Batches on the store (SQLite and PostgreSQL): header, items and per-item results survive a reopen."""

from __future__ import annotations

from gemmaserve.store import Store
from gemmaserve.store.batches import StoreBatches
from gemmaserve.store.database import migrate, open_engine


def open_store(url: str) -> Store:
    engine = open_engine(url)
    migrate(engine)
    return Store(engine)


def batch(status="validating"):
    return {"id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions", "model": None, "status": status,
            "created_at": 1_800_000_000, "in_progress_at": None, "finalized_at": None, "cancelled_at": None,
            "request_counts": {"total": 2, "completed": 0, "failed": 0}, "cost": 0.0, "error": None,
            "metadata": {"k": "v"}, "key_hash": "h" * 64, "headers": {},
            "items": [{"custom_id": "a", "body": {"messages": []}}, {"custom_id": "b", "body": {}}], "results": {}}


def test_batches_survive_a_reopen(db_url):
    store = open_store(db_url)
    repo = StoreBatches(store)
    b = batch()
    repo.create(b)
    b["status"], b["request_counts"]["completed"], b["cost"] = "in_progress", 1, 0.25
    result = {"custom_id": "a", "response": {"status_code": 200, "body": {"id": "gen-1"}}, "error": None}
    repo.add_result(b["id"], result)
    repo.update(b)
    store.close()  # commits what is queued, as a clean shutdown does
    again = open_store(db_url)
    (loaded,) = StoreBatches(again).load()
    assert loaded == {**b, "results": {"a": result}}
    again.close()
