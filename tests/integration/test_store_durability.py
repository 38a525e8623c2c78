"""Nothing billed is lost: a real `gemmaserve serve` is SIGKILLed under load, restarted on the same
data directory, and every request whose client got its whole answer is found in /generation,
/activity and the key's usage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest
from integ_server import MODEL, SUBPROCESS_ENV, one_torch_thread, serve


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "gemmaserve.cli", *args], capture_output=True, text=True,
                         env=SUBPROCESS_ENV, timeout=120, check=True)
    return out.stdout.strip()


def _one_request(api: str, key: str, i: int, done: list, stop: threading.Event) -> None:
    """Requests in a loop; a request counts as completed only once the client holds all of it."""
    headers = {"Authorization": f"Bearer {key}", "HTTP-Referer": "https://load.example"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"count {i}"}], "max_tokens": 12,
            "ignore_eos": True}
    n = 0
    while not stop.is_set():
        n += 1
        stream = (i + n) % 2 == 0
        try:
            if not stream:
                r = httpx.post(f"{api}/chat/completions", json=body, headers=headers, timeout=60)
                if r.status_code == 200:
                    done.append((r.json()["id"], r.json()["usage"]["cost"]))
                continue
            usage, gen_id, finished = None, None, False
            with httpx.stream("POST", f"{api}/chat/completions", json={**body, "stream": True}, headers=headers,
                              timeout=60) as r:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        finished = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        gen_id = chunk["id"]
                        usage = chunk.get("usage") or usage
            if finished and usage is not None:
                done.append((gen_id, usage["cost"]))
        except httpx.HTTPError:
            if stop.is_set():
                return


def test_sigkill_under_load_loses_no_completed_generation(demo_dir, tmp_path):
    data = tmp_path / "data"
    mgmt = _cli("keys", "create", "--management", "--name", "ops", "--data-dir", str(data))
    args = ("--data-dir", str(data), "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "8",
            "--log-level", "warning")
    done: list[tuple[str, float]] = []
    stop = threading.Event()
    with serve(demo_dir, tmp_path, *args) as srv:
        created = httpx.post(f"{srv.api}/keys", json={"name": "load"},
                             headers={"Authorization": f"Bearer {mgmt}"}).json()
        key, key_hash = created["key"], created["data"]["hash"]
        threads = [threading.Thread(target=_one_request, args=(srv.api, key, i, done, stop)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(done) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(srv.proc.pid, signal.SIGKILL)  # mid-load: requests are in flight right now
        srv.proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    completed = list(done)
    assert len(completed) >= 30

    with serve(demo_dir, tmp_path, *args) as srv:
        kh = {"Authorization": f"Bearer {key}"}
        for gen_id, cost in completed:
            r = httpx.get(f"{srv.api}/generation", params={"id": gen_id}, headers=kh)
            assert r.status_code == 200, (gen_id, r.text)
            rec = r.json()["data"]
            assert rec["total_cost"] == cost and rec["http_referer"] == "https://load.example"
        usage = httpx.get(f"{srv.api}/key", headers=kh).json()["data"]["usage"]
        # Every completed request is charged; requests cut by the kill may be charged too (for what
        # they generated), never less.
        assert usage >= sum(c for _, c in completed) - 1e-12
        today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        act = httpx.get(f"{srv.api}/activity", params={"date": today, "api_key_hash": key_hash},
                        headers={"Authorization": f"Bearer {mgmt}"}).json()["data"]
        assert sum(r["requests"] for r in act) >= len(completed)
        assert sum(r["usage"] for r in act) == pytest.approx(usage)
