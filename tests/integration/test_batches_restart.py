"""Batches survive a restart of `gemmaserve serve` (a subprocess on the tiny demo model with its
store in --data-dir): a batch stopped half way by SIGINT completes after the next start, with the
results that were already saved kept and only the rest run again; items bill at half price."""

from __future__ import annotations

import time

import httpx
import pytest
from integ_server import API_KEY, MODEL, one_torch_thread, serve

from gemmaserve.demo import write_demo_model

pytestmark = pytest.mark.timeout(300)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _batch(srv, bid):
    return httpx.get(f"{srv.base}/api/beta/batches/{bid}", headers=AUTH, timeout=30).json()


def test_batch_resumes_after_restart(tmp_path):
    demo = write_demo_model(tmp_path / "demo", size="tiny")
    data = tmp_path / "data"
    args = ("--dtype", "float32", "--log-level", "warning", "--api-key", API_KEY, "--max-model-len", "512",
            "--data-dir", str(data), "--batch-concurrency", "1")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 48, "ignore_eos": True, "temperature": 0}
    reqs = [{"custom_id": f"r{i}", "body": body} for i in range(16)]
    with serve(demo, tmp_path, *args) as srv:
        bid = httpx.post(srv.base + "/api/beta/batches", headers=AUTH, timeout=30, json={
            "endpoint": "/v1/chat/completions", "model": MODEL, "requests": reqs}).json()["id"]
        deadline = time.monotonic() + 120
        while _batch(srv, bid)["request_counts"]["completed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = _batch(srv, bid)
    assert before["status"] == "in_progress" and 2 <= before["request_counts"]["completed"] < 16
    kept = {r["custom_id"]: r for r in before["results"]}
    with serve(demo, tmp_path, *args) as srv:
        deadline = time.monotonic() + 180
        while (b := _batch(srv, bid))["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(0.2)
        interactive = httpx.post(srv.api + "/chat/completions", headers=AUTH, json={"model": MODEL, **body}).json()
    assert b["request_counts"] == {"total": 16, "completed": 16, "failed": 0}
    after = {r["custom_id"]: r for r in b["results"]}
    for cid, r in kept.items():  # saved before the stop: the very same answers, not run again
        assert after[cid] == r
    usage = after["r0"]["response"]["body"]["usage"]
    assert usage["completion_tokens"] == 48
    assert usage["cost"] == pytest.approx(interactive["usage"]["cost"] * 0.5)
