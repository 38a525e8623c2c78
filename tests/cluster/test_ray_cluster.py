"""The cluster on a real local Ray: two tiny-model replicas behind the Serve ingress. One
replica's process is killed during load: unanswered requests are served elsewhere, started
streams end with the mid-stream error chunk, Ray restarts the replica and it rejoins, and
/endpoints shows the outage. Ray is shut down at the end whatever happens."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

GEMMA = "google/gemma-4-26b-a4b-it"
pytestmark = pytest.mark.timeout(400)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(demo_dir):
    from gemmaserve.cluster.cli_cluster import build_parser, spec_from_args
    from gemmaserve.cluster.deploy import APP_NAME, build_app

    port = _free_port()
    args = build_parser().parse_args([
        "--model", str(demo_dir), "--dtype", "float32", "--max-model-len", "512", "--replicas", "2",
        "--cpus-per-replica", "0.5", "--threads-per-replica", "1", "--keepalive-interval", "0.2"])
    spec = spec_from_args(args)
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
                                       "HF_HUB_OFFLINE": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(spec), name=APP_NAME, route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        yield base, APP_NAME
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _body(stream: bool, order: list[str] | None = None, max_tokens: int = 480) -> dict:
    b = {"model": GEMMA, "messages": [{"role": "user", "content": "Count"}], "max_tokens": max_tokens,
         "ignore_eos": True, "temperature": 0, "stream": stream}
    if order:
        b["provider"] = {"order": order}
    return b


def _stream(base: str, body: dict, first_data: threading.Event, out: list) -> None:
    events = []
    try:
        with httpx.stream("POST", base + "/api/v1/chat/completions", json=body, timeout=120) as r:
            out.append(("status", r.status_code))
            buf = ""
            for text in r.iter_text():
                buf += text
                while "\n\n" in buf:
                    ev, buf = buf.split("\n\n", 1)
                    if ev.startswith("data: "):
                        events.append(ev[6:])
                        first_data.set()
    except Exception as exc:  # a hang would surface here as a read timeout
        out.append(("exception", repr(exc)))
    finally:
        first_data.set()
    out.append(("events", events))


def test_replica_killed_under_load(ray_cluster):
    base, app = ray_cluster
    r = httpx.post(base + "/api/v1/chat/completions", json=_body(False, max_tokens=4), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["provider"] in {"gemmaserve/replica-0", "gemmaserve/replica-1"}
    victim = serve.get_deployment_handle("replica-0", app_name=app)
    pid = victim.pid.remote().result(timeout_s=60)

    streams, whole = [], []
    threads = []
    for _ in range(3):  # streams pinned to the victim (fallbacks allowed)
        ev, out = threading.Event(), []
        t = threading.Thread(target=_stream, args=(base, _body(True, ["gemmaserve/replica-0"]), ev, out))
        t.start()
        threads.append(t)
        streams.append((ev, out))

    def post_whole() -> None:
        try:
            whole.append(httpx.post(base + "/api/v1/chat/completions", timeout=120,
                                    json=_body(False, ["gemmaserve/replica-0"])))
        except Exception as exc:
            whole.append(exc)

    for _ in range(3):  # whole answers pinned to the victim: none is sent before it finishes
        t = threading.Thread(target=post_whole)
        t.start()
        threads.append(t)
    for ev, _ in streams:
        assert ev.wait(60)
    # Kill while all six are in flight on the victim (the ingress counts them).
    deadline = time.monotonic() + 60
    while httpx.get(base + "/api/v1/endpoints", timeout=30).json()["data"][0]["in_flight"] < 6:
        assert time.monotonic() < deadline, "the requests never were all in flight"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    for t in threads:
        t.join(150)
        assert not t.is_alive(), "a request hung after the replica died"

    # No client error for requests whose first byte was not sent: served by the other replica.
    for r in whole:
        assert isinstance(r, httpx.Response) and r.status_code == 200, r
        assert r.json()["usage"]["completion_tokens"] == 480
    assert all(r.json()["provider"] == "gemmaserve/replica-1" for r in whole)  # all were cut off on the victim
    # Started streams end: either finished on the victim before it died, or with the error chunk.
    broken = 0
    for _, out in streams:
        d = dict((k, v) for k, v in out if k != "events")
        events = next(v for k, v in out if k == "events")
        assert d.get("status") == 200 and "exception" not in d, out
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        if last.get("error"):
            broken += 1
            assert last["error"]["code"] == 502 and last["choices"][0]["finish_reason"] == "error"
            assert last["provider"] == "gemmaserve/replica-0"
    assert broken >= 1

    # Ray restarts the replica; it rejoins and serves requests pinned to it again.
    deadline = time.monotonic() + 150
    while True:
        assert time.monotonic() < deadline, "replica-0 did not come back"
        try:
            if victim.pid.remote().result(timeout_s=5) != pid:
                break
        except Exception:
            pass
        time.sleep(1)
    while True:
        r = httpx.post(base + "/api/v1/chat/completions", timeout=60, json={
            **_body(False, max_tokens=4), "provider": {"order": ["gemmaserve/replica-0"], "allow_fallbacks": False}})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.status_code == 200 and r.json()["provider"] == "gemmaserve/replica-0", r.text
    rows = {row["tag"]: row for row in httpx.get(base + "/api/v1/endpoints", timeout=30).json()["data"]}
    victim_row = rows["gemmaserve/replica-0"]
    assert victim_row["uptime_last_5m"] < 100.0 and rows["gemmaserve/replica-1"]["uptime_last_5m"] == 100.0
    assert victim_row["outages"] and victim_row["outages"][0]["end"] is not None
    assert victim_row["status"] == 0 and victim_row["latency_last_30m"]["p50"] > 0
    assert time.monotonic() - t_kill < 300
