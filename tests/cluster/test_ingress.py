"""The ingress over real gemmaserve API apps (fake engines), without Ray: forwarding, the
response and /generation naming the endpoint, failover before the first data byte, the mid-stream
error chunk after it, stickiness, errors, and /endpoints. The real process-kill test is
test_ray_cluster.py."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))  # api_support: FakeEngine, ServerThread

from api_support import API_KEY, FakeEngine, ServerThread, make_state  # noqa: E402

from gemmaserve.api.app import create_app  # noqa: E402
from gemmaserve.api.keys import hash_key  # noqa: E402
from gemmaserve.cluster.asgi_call import asgi_stream  # noqa: E402
from gemmaserve.cluster.endpoints import Endpoint  # noqa: E402
from gemmaserve.cluster.ingress import Ingress, IngressConfig, create_ingress_app  # noqa: E402
from gemmaserve.cluster.transport import EndpointFailure, HttpTransport, Opened  # noqa: E402

GEMMA = "google/gemma-4-26b-a4b-it"
MODELS = frozenset({GEMMA})


class LocalTransport:
    """The replica's own path (asgi_stream over the API app) called in-process instead of over
    Ray; `fail_open` / `fail_after` inject the lost replica."""

    def __init__(self, app):
        self.app = app
        self.fail_open = False
        self.fail_after: int | None = None  # chunks delivered before the connection breaks
        self.opened = 0

    async def open(self, method, path, query, headers, body) -> Opened:
        self.opened += 1
        if self.fail_open:
            raise EndpointFailure("ActorDiedError: replica process died")
        gen = asgi_stream(self.app, method, path, query, headers, body)
        head = await gen.__anext__()
        limit = self.fail_after

        async def chunks():
            n = 0
            async for c in gen:
                if limit is not None and n >= limit:
                    await gen.aclose()
                    raise EndpointFailure("ActorDiedError: replica process died")
                n += 1
                yield c

        return Opened(head["status"], [tuple(h) for h in head["headers"]], chunks(), gen.aclose)


@pytest.fixture(scope="module")
def cluster(demo_tokenizer):
    engines, transports, endpoints = [], {}, []
    for i in range(2):
        tag = f"gemmaserve/replica-{i}"
        eng = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size)
        app = create_app(make_state(demo_tokenizer, eng, provider_name=tag, keepalive_interval_s=0.05))
        engines.append(eng)
        transports[tag] = LocalTransport(app)
        endpoints.append(Endpoint(tag=tag, models=MODELS, deployment=f"replica-{i}"))
    up_engine = FakeEngine(demo_tokenizer, vocab_size=demo_tokenizer.vocab_size, script=["Up", "stream"])
    upstream_app = create_app(make_state(demo_tokenizer, up_engine, provider_name="SomeoneElse",
                                         api_key_hashes=frozenset({hash_key("upstream-key")})))
    with ServerThread(upstream_app) as up:
        ep = Endpoint(tag="acme/fp8", models=MODELS, base_url=up.url, api_key="upstream-key", quantization="fp8",
                      prompt_price_per_m=1.0, completion_price_per_m=2.0)
        endpoints.append(ep)
        client = httpx.AsyncClient(timeout=30)
        transports[ep.tag] = HttpTransport(ep, client)
        ing = Ingress(IngressConfig(default_model=GEMMA, api_key_hashes=frozenset({hash_key(API_KEY)})),
                      endpoints, transports)
        with ServerThread(create_ingress_app(ing)) as srv:
            srv.ing, srv.transports, srv.engines = ing, transports, engines
            srv.client = openai.OpenAI(base_url=srv.url, api_key=API_KEY, max_retries=0, timeout=30)
            yield srv


@pytest.fixture
def fresh(cluster):
    for t in cluster.transports.values():
        if isinstance(t, LocalTransport):
            t.fail_open, t.fail_after, t.opened = False, None, 0
    for e in cluster.engines:
        e.script, e.step_delay = ["Hello", " world", "!"], 0.0
    return cluster


def chat(srv, **kw):
    extra = kw.pop("extra_body", {})
    return srv.client.chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Hi"}],
                                              extra_body=extra, **kw)


def gen_record(srv, gen_id):
    r = httpx.get(srv.url + "/generation", params={"id": gen_id}, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_whole_response_names_replica_and_generation_records_it(fresh):
    resp = chat(fresh, extra_body={"provider": {"only": ["gemmaserve"]}})
    assert resp.choices[0].message.content == "Hello world!"
    assert resp.provider in {"gemmaserve/replica-0", "gemmaserve/replica-1"}
    rec = gen_record(fresh, resp.id)
    assert rec["provider_name"] == resp.provider and rec["tokens_completion"] == resp.usage.completion_tokens
    assert [a["provider_name"] for a in rec["provider_responses"]] == [resp.provider]
    assert rec["streamed"] is False and rec["finish_reason"] == "stop"


def test_stream_through_ingress(fresh):
    chunks = list(chat(fresh, stream=True, extra_body={"provider": {"order": ["gemmaserve/replica-1"]}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world!" and chunks[-1].usage.completion_tokens > 0
    assert {c.provider for c in chunks} == {"gemmaserve/replica-1"}
    assert gen_record(fresh, chunks[0].id)["streamed"] is True


def test_upstream_provider_called_with_its_key_and_named(fresh):
    resp = chat(fresh, extra_body={"provider": {"only": ["acme"]}})
    assert resp.choices[0].message.content == "Upstream" and resp.provider == "acme/fp8"
    chunks = list(chat(fresh, stream=True, extra_body={"provider": {"quantizations": ["fp8"]}}))
    assert {c.provider for c in chunks} == {"acme/fp8"}


def test_lost_replica_before_answer_is_retried_elsewhere(fresh):
    fresh.transports["gemmaserve/replica-0"].fail_open = True
    order = {"order": ["gemmaserve/replica-0", "gemmaserve/replica-1"]}
    resp = chat(fresh, extra_body={"provider": order})
    assert resp.provider == "gemmaserve/replica-1" and resp.choices[0].message.content == "Hello world!"
    rec = gen_record(fresh, resp.id)
    assert [a["provider_name"] for a in rec["provider_responses"]] == ["gemmaserve/replica-0", "gemmaserve/replica-1"]
    # a stream that broke before any data event fails over too (the client sees one clean stream)
    fresh.transports["gemmaserve/replica-0"].fail_open = False
    fresh.transports["gemmaserve/replica-0"].fail_after = 0
    chunks = list(chat(fresh, stream=True, extra_body={"provider": order}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world!"
    assert {c.provider for c in chunks} == {"gemmaserve/replica-1"}
    # with fallbacks off there is no second endpoint: OpenRouter's 502
    with pytest.raises(openai.APIStatusError) as e:
        chat(fresh, extra_body={"provider": {**order, "allow_fallbacks": False, "order": ["gemmaserve/replica-0"]}},
             stream=False)
    assert e.value.status_code == 502 and e.value.body["metadata"]["error_type"] == "provider_unavailable"


def test_stream_broken_after_data_ends_with_error_chunk(fresh):
    fresh.transports["gemmaserve/replica-0"].fail_after = 2
    r = httpx.post(fresh.url + "/chat/completions", timeout=30, headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": GEMMA, "stream": True, "messages": [{"role": "user", "content": "Hi"}],
                         "provider": {"order": ["gemmaserve/replica-0"]}})
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    import json

    last = json.loads(events[-2][6:])
    assert last["error"] == {"code": 502, "message": "Provider disconnected unexpectedly",
                             "metadata": {"error_type": "provider_unavailable"}}
    assert last["choices"][0]["finish_reason"] == "error" and last["provider"] == "gemmaserve/replica-0"
    assert last["id"] == json.loads(events[0][6:])["id"]
    rows = {row["tag"]: row for row in httpx.get(fresh.root + "/api/v1/endpoints").json()["data"]}
    assert rows["gemmaserve/replica-0"]["uptime_last_5m"] < 100.0


def test_session_sticks_to_one_replica(fresh):
    served = {chat(fresh, extra_body={"session_id": "conv-1", "provider": {"only": ["gemmaserve"]}}).provider
              for _ in range(6)}
    assert len(served) == 1


def test_errors_in_openrouter_shape(fresh):
    with pytest.raises(openai.NotFoundError) as e:
        chat(fresh, extra_body={"provider": {"only": ["nobody"]}})
    assert "provider.only" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        fresh.client.chat.completions.create(model="foo/bar", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["message"] == "foo/bar is not a valid model ID"
    with pytest.raises(openai.BadRequestError):
        chat(fresh, extra_body={"provider": {"sort": "speed"}})
    r = httpx.post(fresh.url + "/chat/completions", json={"model": GEMMA})
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    r = httpx.post(fresh.url + "/chat/completions", content=b"{", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Invalid JSON in request body"
    # a replica's own validation error passes through unchanged (not retried, not counted in uptime)
    def counted():
        return sum(row["requests_last_30m"] for row in httpx.get(fresh.root + "/api/v1/endpoints").json()["data"])

    before = counted()
    r = httpx.post(fresh.url + "/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": GEMMA, "messages": [{"role": "user", "content": "x"}], "temperature": -1})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    assert counted() == before


def test_endpoints_listing(fresh):
    chat(fresh)
    r = httpx.get(fresh.root + f"/api/v1/models/{GEMMA}/endpoints")
    assert r.status_code == 200
    rows = r.json()["data"]["endpoints"]
    assert [row["tag"] for row in rows] == ["gemmaserve/replica-0", "gemmaserve/replica-1", "acme/fp8"]
    up = rows[2]
    assert up["pricing"]["prompt"] == "0.000001" and up["quantization"] == "fp8" and up["kind"] == "upstream"
    for row in rows:
        assert {"uptime_last_5m", "uptime_last_30m", "uptime_last_1d", "latency_last_30m", "throughput_last_30m",
                "status", "in_flight", "outages"} <= row.keys()
    assert any(row["latency_last_30m"] for row in rows)
    assert httpx.get(fresh.root + "/api/v1/models").json()["data"][0]["id"] == GEMMA
    assert httpx.get(fresh.root + "/health").json()["status"] == "ok"
