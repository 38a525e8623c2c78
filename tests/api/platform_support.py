"""A fake-engine server with a real store (SQLite in a temp dir) and a management key."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import func, select
from api_support import FakeEngine, ServerThread, make_state

from gemmaserve.api.app import create_app
from gemmaserve.store import Store, StoreOptions
from gemmaserve.store.schema import RequestOutcome

# Prices high enough that a few tokens make visible money: $0.001 per prompt token, $0.01 per
# completion token.
PRICES = {"prompt_price_per_m": 1000.0, "completion_price_per_m": 10000.0}


@contextmanager
def platform_server(tokenizer, data_dir: Path, *, options: StoreOptions = StoreOptions(), **config):
    store = Store.open(str(data_dir), options=options)
    if not store.list_keys(management=True):
        store.create_key("ops", is_management=True, plaintext="sk-gs-v1-management-test-key")
    engine = FakeEngine(tokenizer, vocab_size=tokenizer.vocab_size)
    state = make_state(tokenizer, engine, **{**PRICES, **config})
    state.store = store
    from gemmaserve.api.store_ledger import StoreLedger

    state.ledger = StoreLedger(state.config, store, state.metrics)
    try:
        with ServerThread(create_app(state)) as srv:
            srv.engine, srv.state, srv.store = engine, state, store
            srv.mgmt = httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer sk-gs-v1-management-test-key"})
            yield srv
            srv.mgmt.close()
    finally:
        store.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(srv, key: str | None, **body) -> httpx.Response:
    payload = {"model": "google/gemma-4-26b-a4b-it", "messages": [{"role": "user", "content": "hi"}], **body}
    return httpx.post(f"{srv.url}/chat/completions", json=payload, headers=bearer(key) if key else {}, timeout=30)


def wait_for_outcomes(store, n: int, timeout: float = 10.0) -> None:
    """Outcomes are written by middleware after the response's last byte: wait until `n` are in."""
    deadline = time.monotonic() + timeout
    while True:
        with store.session() as session:
            count = session.scalar(select(func.count()).select_from(RequestOutcome))
        if count >= n or time.monotonic() > deadline:
            assert count == n, f"{count} request outcomes stored, expected {n}"
            return
        time.sleep(0.02)
