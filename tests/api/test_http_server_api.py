"""The guarded HTTP server (api/http_server.py, api/limits.py) against slow and malformed clients:
headers and bodies trickled past their deadline get a JSON 408 and a closed connection, a 1 MB
header line a JSON 400 that arrives (no reset), connections and concurrent requests are capped,
and a kept-alive connection serves request after request."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from api_support import FakeEngine, ServerThread, make_state

from gemmaserve.api.app import create_app

MODEL = "google/gemma-4-26b-a4b-it"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}).encode()


@pytest.fixture(scope="module")
def guarded(demo_tokenizer):
    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    state = make_state(demo_tokenizer, engine, header_timeout_s=0.5, body_timeout_s=0.5, max_concurrent_requests=2,
                       max_connections=64, keepalive_timeout_s=30)
    with ServerThread(create_app(state)) as srv:
        srv.engine = engine
        yield srv


def connect(srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return s


def read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one response read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:n]


def closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
        return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def test_trickled_headers_get_a_408_then_close(guarded):
    s = connect(guarded)
    s.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    t = time.monotonic()
    for _ in range(3):  # a byte at a time, never finishing the head
        time.sleep(0.2)
        s.sendall(b"X")
    status, headers, body = read_response(s)
    assert status == 408 and json.loads(body)["error"]["code"] == 408
    assert headers["content-type"] == "application/json"
    assert closed_within(s, 5) and time.monotonic() - t < 5


def test_an_idle_connection_that_never_asks_is_closed(guarded):
    s = connect(guarded)
    assert closed_within(s, 5)


def test_trickled_body_gets_a_408(guarded):
    s = connect(guarded)
    s.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{")
    status, _, body = read_response(s)
    err = json.loads(body)["error"]
    assert status == 408 and err["metadata"]["error_type"] == "request_timeout"


def test_huge_header_line_gets_a_json_400_not_a_reset(guarded):
    s = connect(guarded)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    status, headers, body = read_response(s)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["metadata"]["error_type"] == "invalid_request"


def test_malformed_request_line_gets_a_json_400(guarded):
    s = connect(guarded)
    s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    status, _, body = read_response(s)
    assert status == 400 and json.loads(body)["error"]["code"] == 400


def test_concurrency_limit_answers_503_json_and_health_still_answers(guarded):
    guarded.engine.script = [f" w{i}" for i in range(100)]
    guarded.engine.step_delay = 0.05
    try:
        streams = [httpx.stream("POST", guarded.url + "/chat/completions", timeout=30,
                                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True})
                   for _ in range(2)]
        opened = [s.__enter__() for s in streams]
        r = httpx.post(guarded.url + "/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["metadata"]["error_type"] == "provider_overloaded"
        assert httpx.get(guarded.root + "/health").status_code == 200
        for s, o in zip(streams, opened):
            s.__exit__(None, None, None)
    finally:
        guarded.engine.script, guarded.engine.step_delay = ["Hello", " world", "!"], 0.0


def test_keep_alive_connection_serves_many_requests(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        for _ in range(20):
            r = client.post("/chat/completions", content=BODY, headers={"content-type": "application/json"})
            assert r.status_code == 200
        # a request on the connection after the header deadline has passed since the last one
        time.sleep(0.8)
        assert client.post("/chat/completions", content=BODY, headers={"content-type": "application/json"}
                           ).status_code == 200


def test_connection_cap_closes_the_excess(demo_tokenizer):
    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    state = make_state(demo_tokenizer, engine, max_connections=4, header_timeout_s=30)
    with ServerThread(create_app(state)) as srv:
        held = [connect(srv) for _ in range(4)]
        time.sleep(0.2)
        extra = connect(srv)
        assert closed_within(extra, 5)
        for s in held:
            s.close()
        time.sleep(0.3)
        assert httpx.get(srv.root + "/health").status_code == 200
