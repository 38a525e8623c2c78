"""The generation skeleton's contract with the ledger: `open` before the engine sees a request,
`close` exactly once on every exit path (finish, in-band error, engine refusal, client gone),
for both endpoints and both paths."""

from __future__ import annotations

import time

import httpx
import pytest
from api_support import FakeEngine, ServerThread, make_state

from gemmaserve.api.accounting import MemoryLedger
from gemmaserve.api.app import create_app
from gemmaserve.types import QueueFullError

MODEL = "google/gemma-4-26b-a4b-it"
BODIES = {
    "/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    "/completions": {"model": MODEL, "prompt": "Once"},
}


class RecordingLedger(MemoryLedger):
    def __init__(self, state):
        super().__init__(state.config, state.generations, state.metrics)
        self.events: list[tuple[str, str]] = []

    def open(self, gen):
        self.events.append(("open", gen.gen_id))

    def close(self, gen, run, outcome):
        self.events.append(("close", gen.gen_id, outcome.finish_reason, outcome.cancelled, outcome.streamed))
        return super().close(gen, run, outcome)


@pytest.fixture(scope="module")
def server(demo_tokenizer):
    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    state = make_state(demo_tokenizer, engine, keepalive_interval_s=0.05)
    state.ledger = RecordingLedger(state)
    with ServerThread(create_app(state)) as srv:
        srv.engine, srv.state = engine, state
        yield srv


@pytest.fixture
def srv(server):
    e = server.engine
    e.script, e.step_delay, e.submit_error, e.fail_after = ["Hello", " world", "!"], 0.0, None, None
    server.state.ledger.events.clear()
    return server


def _closes(srv) -> list[tuple]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ev = list(srv.state.ledger.events)
        if ev and ev[-1][0] == "close":
            break
        time.sleep(0.02)
    ev = list(srv.state.ledger.events)
    assert [e[0] for e in ev] == ["open", "close"], ev
    assert ev[0][1] == ev[1][1]
    return ev[1][2:]


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("stream", [False, True])
def test_finished_request_closes_once(srv, path, stream):
    r = httpx.post(srv.url + path, json={**BODIES[path], "stream": stream}, timeout=30)
    assert r.status_code == 200
    assert _closes(srv) == ("stop", False, stream)


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("stream", [False, True])
def test_in_band_error_closes_once(srv, path, stream):
    srv.engine.fail_after = 2
    r = httpx.post(srv.url + path, json={**BODIES[path], "stream": stream}, timeout=30)
    assert r.status_code == 200
    assert _closes(srv) == ("error", False, stream)


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("stream", [False, True])
def test_engine_refusal_closes_once(srv, path, stream):
    srv.engine.submit_error = QueueFullError("full")
    r = httpx.post(srv.url + path, json={**BODIES[path], "stream": stream}, timeout=30)
    assert r.status_code == 429 and r.json()["error"]["code"] == 429
    assert _closes(srv) == ("error", False, stream)
    assert srv.state.generations.get(srv.state.ledger.events[0][1]) is None  # nothing ran: no record


@pytest.mark.parametrize("path", list(BODIES))
def test_client_gone_mid_stream_closes_once(srv, path):
    srv.engine.script = [f" w{i}" for i in range(200)]
    srv.engine.step_delay = 0.05
    with httpx.stream("POST", srv.url + path, json={**BODIES[path], "stream": True}, timeout=30) as r:
        next(r.iter_lines())
    reason, cancelled, streamed = _closes(srv)
    assert cancelled is True and streamed is True


@pytest.mark.parametrize("path", list(BODIES))
def test_client_gone_whole_closes_once(srv, path):
    srv.engine.script = [f" w{i}" for i in range(200)]
    srv.engine.step_delay = 0.05
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + path, json=BODIES[path], timeout=0.5)
    assert _closes(srv) == (None, True, False)
