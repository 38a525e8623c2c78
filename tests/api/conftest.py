"""Fixtures for the API tests: fake-engine servers (open and keyed) over the root conftest's demo tokenizer."""

from __future__ import annotations

import pytest
from api_support import API_KEY, FakeEngine, ServerThread, make_state

from gemmaserve.api.app import create_app
from gemmaserve.api.keys import hash_key


@pytest.fixture(scope="module")
def fake_server(demo_tokenizer):
    """Open server (no key) on a fake engine; keep-alive every 50 ms so tests see the comments."""
    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    state = make_state(demo_tokenizer, engine, keepalive_interval_s=0.05, max_body_bytes=64 * 1024)
    with ServerThread(create_app(state)) as srv:
        srv.engine, srv.state = engine, state
        yield srv


@pytest.fixture
def fake(fake_server):
    """The module's fake server with its engine reset to the default script."""
    e = fake_server.engine
    e.script, e.first_delay, e.step_delay = ["Hello", " world", "!"], 0.0, 0.0
    e.submit_error, e.fail_after, e.cached_tokens, e.ready = None, None, 0, True
    e.calls.clear()
    return fake_server


@pytest.fixture(scope="module")
def auth_server(demo_tokenizer):
    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    state = make_state(demo_tokenizer, engine, api_key_hashes=frozenset({hash_key(API_KEY)}),
                       served_model_name="my-gemma")
    with ServerThread(create_app(state)) as srv:
        srv.engine, srv.state = engine, state
        yield srv
