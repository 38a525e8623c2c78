"""Batches over the scripted fake engine: every endpoint family, per-item errors, results inline,
background priority and the batch price, cancel, key scoping, and resuming from a saved repository."""

from __future__ import annotations

import copy
import time

import httpx
import pytest
from api_support import API_KEY, FakeEngine, ServerThread, make_state

from gemmaserve.api.app import create_app

MODEL = "google/gemma-4-26b-a4b-it"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def wait(url, batch_id, headers=None, until=("completed", "failed", "cancelled"), timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        b = httpx.get(f"{url}/api/beta/batches/{batch_id}", headers=headers, timeout=60).json()
        if b["status"] in until or time.monotonic() > deadline:
            return b
        time.sleep(0.05)


@pytest.mark.parametrize("endpoint, good, bad", [
    ("/v1/chat/completions", CHAT, {"messages": []}),
    ("/v1/completions", {"prompt": "hi"}, {"prompt": []}),
    ("/v1/responses", {"input": "hi"}, {"input": "hi", "store": True}),
    ("/v1/messages", {"max_tokens": 20, **CHAT}, {"messages": CHAT["messages"]}),
])
def test_batch_runs_every_endpoint_with_per_item_errors(fake, endpoint, good, bad):
    reqs = [{"custom_id": f"ok-{i}", "body": good} for i in range(5)] + [{"custom_id": "bad", "body": bad}]
    r = httpx.post(fake.root + "/api/beta/batches", json={"endpoint": endpoint, "model": MODEL, "requests": reqs})
    assert r.status_code == 202
    created = r.json()
    assert (created["object"], created["completion_window"], created["request_counts"]) == (
        "batch", "24h", {"total": 6, "completed": 0, "failed": 0})
    assert "results" not in created and created["id"].startswith("batch_")
    b = wait(fake.root, created["id"])
    assert b["status"] == "completed" and b["finalized_at"] is not None
    assert b["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    assert [x["custom_id"] for x in b["results"]] == [f"ok-{i}" for i in range(5)] + ["bad"]
    ok = b["results"][0]
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    body = ok["response"]["body"]
    text = {"/v1/chat/completions": lambda: body["choices"][0]["message"]["content"],
            "/v1/completions": lambda: body["choices"][0]["text"],
            "/v1/responses": lambda: body["output_text"],
            "/v1/messages": lambda: body["content"][0]["text"]}[endpoint]()
    assert text == "Hello world!"
    failed = b["results"][-1]
    assert failed["response"]["status_code"] == 400 and failed["error"]["code"] == 400
    assert failed["error"]["message"]
    assert b["cost"] == pytest.approx(sum(x["response"]["body"]["usage"]["cost"] for x in b["results"][:5]))


def test_batch_items_run_at_background_priority_and_half_price(fake):
    interactive = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, **CHAT}).json()
    assert fake.engine.calls[-1].params.priority == 0
    r = httpx.post(fake.root + "/api/beta/batches", json={"endpoint": "/v1/chat/completions", "model": MODEL,
                                                          "requests": [{"custom_id": "a", "body": CHAT}]})
    b = wait(fake.root, r.json()["id"])
    assert fake.engine.calls[-1].params.priority == 1
    item = b["results"][0]["response"]["body"]
    assert item["usage"]["prompt_tokens"] == interactive["usage"]["prompt_tokens"]
    assert item["usage"]["cost"] == pytest.approx(interactive["usage"]["cost"] * 0.5)
    assert fake.state.generations.get(item["id"])["total_cost"] == pytest.approx(item["usage"]["cost"])


def test_cancel_aborts_in_flight_items(fake):
    fake.engine.step_delay = 0.2
    reqs = [{"custom_id": str(i), "body": {"model": MODEL, **CHAT}} for i in range(40)]
    r = httpx.post(fake.root + "/api/beta/batches", json={"endpoint": "/v1/chat/completions", "requests": reqs})
    bid = r.json()["id"]
    deadline = time.monotonic() + 10
    while not fake.engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    b = httpx.post(f"{fake.root}/api/beta/batches/{bid}/cancel").json()
    assert b["status"] == "cancelled" and b["cancelled_at"] is not None
    assert b["request_counts"]["completed"] < 40
    assert fake.engine.aborted and not fake.engine.active
    assert wait(fake.root, bid)["status"] == "cancelled"


@pytest.mark.parametrize("body, param", [
    ({"endpoint": "/v1/embeddings", "requests": [{"custom_id": "a", "body": {}}]}, "endpoint"),
    ({"endpoint": "/v1/chat/completions", "requests": []}, "requests"),
    ({"endpoint": "/v1/chat/completions", "requests": [{"custom_id": "a", "body": {}}] * 2}, "requests"),
    ({"endpoint": "/v1/chat/completions", "requests": [{"custom_id": "a"}]}, "requests[0].body"),
])
def test_create_errors(fake, body, param):
    r = httpx.post(fake.root + "/api/beta/batches", json=body)
    assert r.status_code == 400 and r.json()["error"]["metadata"]["param"] == param
    assert httpx.get(fake.root + "/api/beta/batches/batch_nope").status_code == 404


def test_batches_belong_to_their_key(auth_server):
    auth = {"authorization": f"Bearer {API_KEY}"}
    body = {"endpoint": "/v1/chat/completions", "requests": [{"custom_id": "a", "body": {"model": "my-gemma", **CHAT}}]}
    assert httpx.post(auth_server.root + "/api/beta/batches", json=body).status_code == 401
    bid = httpx.post(auth_server.root + "/api/beta/batches", json=body, headers=auth).json()["id"]
    b = wait(auth_server.root, bid, auth)
    assert b["results"][0]["response"]["status_code"] == 200  # the item ran under the batch's key
    assert httpx.get(f"{auth_server.root}/api/beta/batches/{bid}").status_code == 401
    listed = httpx.get(auth_server.root + "/api/beta/batches", headers=auth).json()["data"]
    assert bid in [x["id"] for x in listed]


class DictBatches:
    """A BatchRepository that outlives an app (stands in for the durable store)."""

    def __init__(self):
        self.saved = {}

    def create(self, batch):
        self.saved[batch["id"]] = copy.deepcopy({**batch, "results": {}})

    def update(self, batch):
        self.saved[batch["id"]].update(copy.deepcopy({k: v for k, v in batch.items() if k not in ("items", "results")}))

    def add_result(self, batch_id, result):
        self.saved[batch_id]["results"][result["custom_id"]] = copy.deepcopy(result)

    def load(self):
        return [copy.deepcopy(b) for b in self.saved.values()]


def test_restart_resumes_unfinished_items(demo_tokenizer):
    repo = DictBatches()
    slow = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size, step_delay=0.05)
    reqs = [{"custom_id": str(i), "body": {"model": MODEL, **CHAT}} for i in range(30)]
    state = make_state(demo_tokenizer, slow, batch_concurrency=2)
    state.batch_repo = repo
    with ServerThread(create_app(state)) as srv:
        bid = httpx.post(srv.root + "/api/beta/batches", json={"endpoint": "/v1/chat/completions",
                                                              "requests": reqs}).json()["id"]
        deadline = time.monotonic() + 10
        while len(repo.saved[bid]["results"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    done_before = set(repo.saved[bid]["results"])
    assert 3 <= len(done_before) < 30 and repo.saved[bid]["status"] == "in_progress"
    fresh = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    state2 = make_state(demo_tokenizer, fresh)
    state2.batch_repo = repo
    with ServerThread(create_app(state2)) as srv:
        b = wait(srv.root, bid)
    assert b["status"] == "completed" and b["request_counts"] == {"total": 30, "completed": 30, "failed": 0}
    assert len(fresh.calls) == 30 - len(done_before)  # only the unfinished items ran again


def test_restart_on_the_durable_store(demo_tokenizer, tmp_path):
    """The same resume with the store's repository: the server process's state is gone, the
    SQLite file is not."""
    from gemmaserve.store import Store
    from gemmaserve.store.batches import StoreBatches

    reqs = [{"custom_id": str(i), "body": {"model": MODEL, **CHAT}} for i in range(12)]
    store = Store.open(data_dir=str(tmp_path))
    slow = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size, step_delay=0.05)
    state = make_state(demo_tokenizer, slow, batch_concurrency=1)
    state.batch_repo = StoreBatches(store)
    with ServerThread(create_app(state)) as srv:
        bid = httpx.post(srv.root + "/api/beta/batches", json={"endpoint": "/v1/chat/completions",
                                                              "requests": reqs}).json()["id"]
        wait(srv.root, bid, until=("in_progress",))
        deadline = time.monotonic() + 10
        while httpx.get(f"{srv.root}/api/beta/batches/{bid}").json()["request_counts"]["completed"] < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.01)
    store.close()
    store = Store.open(data_dir=str(tmp_path))
    (saved,) = StoreBatches(store).load()
    assert saved["status"] == "in_progress" and 2 <= len(saved["results"]) < 12
    fresh = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    state2 = make_state(demo_tokenizer, fresh)
    state2.batch_repo = StoreBatches(store)
    with ServerThread(create_app(state2)) as srv:
        b = wait(srv.root, bid)
    assert b["status"] == "completed" and b["request_counts"]["completed"] == 12
    assert len(fresh.calls) == 12 - len(saved["results"])
    store.close()


def test_batch_ttft_benchmark_runs_against_a_server(fake):
    """The benchmark's measuring loop end to end (no timing asserted): all three conditions probe,
    and the two loaded ones really ran background items."""
    import asyncio

    from benchmarks.suite import batch_ttft
    from benchmarks.suite.prompts import PromptVocab

    args = batch_ttft.parser().parse_args(["--model", "unused", "--rounds", "1", "--probes", "2", "--gap", "0",
                                           "--settle", "0.3", "--batch-items", "6", "--input-len", "8"])
    fake.engine.step_delay = 0.02
    summary = asyncio.run(batch_ttft.run(args, fake.root, PromptVocab(range(300, 400), bos_id=2)))
    assert {c: summary[c]["probes"] for c in ("idle", "batch", "same_load_interactive")} == {
        "idle": 2, "batch": 2, "same_load_interactive": 2}
    assert summary["batch"]["background_items_done"] > 0 and summary["same_load_interactive"]["background_items_done"] > 0
    assert set(summary["ratios"]) == {"batch_vs_idle_ttft_p50", "same_load_interactive_vs_idle_ttft_p50"}


def test_two_thousand_items(demo_tokenizer):
    engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
    reqs = [{"custom_id": f"c{i}", "body": {"prompt": f"{i}", "max_tokens": 2}} for i in range(2000)]
    with ServerThread(create_app(make_state(demo_tokenizer, engine, batch_concurrency=32))) as srv:
        r = httpx.post(srv.root + "/api/beta/batches", json={"endpoint": "/v1/completions", "model": MODEL,
                                                             "requests": reqs}, timeout=60)
        assert r.status_code == 202
        b = wait(srv.root, r.json()["id"], timeout=240)
    assert b["request_counts"] == {"total": 2000, "completed": 2000, "failed": 0}
    assert [x["custom_id"] for x in b["results"]] == [f"c{i}" for i in range(2000)]
    assert len(engine.calls) == 2000 and not engine.active
