"""Routing with OpenRouter's provider semantics, without Ray: filters, order, sort, balancing,
fallbacks, the models list, stickiness, and the live stats it reads."""

from __future__ import annotations

import random

import pytest

from gemmaserve.cluster.endpoints import Endpoint, load_providers
from gemmaserve.cluster.route_request import PREFIX_CHARS, route_request
from gemmaserve.cluster.routing import ProviderPrefs, RouteRequest, Router, RoutingError
from gemmaserve.cluster.stats import EndpointStats, Outcome, StatsBook, percentiles

GEMMA = "google/gemma-4-26b-a4b-it"
OTHER = "acme/other-model"
M = frozenset({GEMMA})


def rep(i: int, **kw) -> Endpoint:
    return Endpoint(tag=f"gemmaserve/replica-{i}", models=M, deployment=f"replica-{i}", **kw)


def up(tag: str, models=M, **kw) -> Endpoint:
    return Endpoint(tag=tag, models=models, base_url=f"http://{tag.replace('/', '-')}.example/api/v1", **kw)


def tags(plan) -> list[str]:
    return [ep.tag for _, ep in plan]


def req(provider=None, models=(GEMMA,), **kw) -> RouteRequest:
    return RouteRequest(models=tuple(models), prefs=ProviderPrefs.parse(provider), **kw)


@pytest.fixture
def fleet():
    eps = [rep(0), rep(1),
           up("deepinfra/bf16", prompt_price_per_m=0.1, completion_price_per_m=0.4, quantization="bf16",
              supported_parameters=frozenset({"max_tokens", "temperature"})),
           up("deepinfra/turbo", prompt_price_per_m=0.05, completion_price_per_m=0.2, quantization="fp8",
              context_length=8192),
           up("acme", models=frozenset({OTHER}), prompt_price_per_m=1.0, completion_price_per_m=1.0)]
    stats = StatsBook()
    return eps, stats, Router(eps, stats, rng=random.Random(0))


def test_default_balancing_prefers_cheap_then_idle(fleet):
    eps, stats, router = fleet
    stats["gemmaserve/replica-0"].started()
    stats["gemmaserve/replica-0"].started()
    assert tags(router.plan(req(), 0.0)) == ["gemmaserve/replica-1", "gemmaserve/replica-0",
                                             "deepinfra/turbo", "deepinfra/bf16"]


def test_equal_replicas_spread_evenly(fleet):
    _, _, router = fleet
    firsts = [tags(router.plan(req(), 0.0))[0] for _ in range(400)]
    assert 150 < firsts.count("gemmaserve/replica-0") < 250


def test_recent_failure_goes_last_then_recovers(fleet):
    _, stats, router = fleet
    stats["gemmaserve/replica-1"].started()
    stats["gemmaserve/replica-1"].finished(Outcome(at=100.0, ok=False))
    assert tags(router.plan(req(), 101.0))[-1] == "gemmaserve/replica-1"
    # cooldown (30 s) over: back among the cheapest
    assert "gemmaserve/replica-1" in tags(router.plan(req(), 131.0))[:2]
    stats["gemmaserve/replica-0"].set_health(False, now=200.0, wall=1.0)
    assert tags(router.plan(req(), 200.0))[-1] == "gemmaserve/replica-0"


def test_filters(fleet):
    _, _, router = fleet
    assert tags(router.plan(req({"only": ["deepinfra"]}), 0)) == ["deepinfra/turbo", "deepinfra/bf16"]
    assert tags(router.plan(req({"only": ["deepinfra/bf16"]}), 0)) == ["deepinfra/bf16"]
    assert "deepinfra/turbo" not in tags(router.plan(req({"ignore": ["deepinfra/turbo"]}), 0))
    assert tags(router.plan(req({"quantizations": ["fp8"]}), 0)) == ["deepinfra/turbo"]
    assert set(tags(router.plan(req({"max_price": {"prompt": 0.07, "completion": "1"}}), 0))) == {
        "gemmaserve/replica-0", "gemmaserve/replica-1", "deepinfra/turbo"}
    # require_parameters: deepinfra/bf16 declares no `tools`
    with_tools = req({"require_parameters": True}, parameters=frozenset({"tools", "max_tokens"}))
    assert "deepinfra/bf16" not in tags(router.plan(with_tools, 0))
    assert "deepinfra/bf16" in tags(router.plan(req(parameters=frozenset({"tools"})), 0))
    # context length: turbo has 8192
    assert "deepinfra/turbo" not in tags(router.plan(req(prompt_tokens=9000), 0))


def test_everything_filtered_is_404_unknown_model_400(fleet):
    _, _, router = fleet
    with pytest.raises(RoutingError) as e:
        router.plan(req({"only": ["nobody"]}), 0)
    assert e.value.status == 404 and "provider.only" in e.value.message
    with pytest.raises(RoutingError) as e:
        router.plan(req(models=("foo/bar",)), 0)
    assert e.value.status == 400 and e.value.message == "foo/bar is not a valid model ID"


def test_order_and_allow_fallbacks(fleet):
    _, _, router = fleet
    plan = tags(router.plan(req({"order": ["deepinfra/bf16", "gemmaserve/replica-1"]}), 0))
    assert plan[:2] == ["deepinfra/bf16", "gemmaserve/replica-1"] and len(plan) == 4
    plan = tags(router.plan(req({"order": ["deepinfra/bf16", "gemmaserve/replica-1"], "allow_fallbacks": False}), 0))
    assert plan == ["deepinfra/bf16", "gemmaserve/replica-1"]
    # base slug names every endpoint of the provider
    plan = tags(router.plan(req({"order": ["deepinfra"], "allow_fallbacks": False}), 0))
    assert sorted(plan) == ["deepinfra/bf16", "deepinfra/turbo"]
    # no order, no fallbacks: the single first choice
    assert len(router.plan(req({"allow_fallbacks": False}), 0)) == 1


def test_sort_by_price_latency_throughput(fleet):
    _, stats, router = fleet
    assert tags(router.plan(req({"sort": "price"}), 0))[-1] == "deepinfra/bf16"
    for tag, ttft, tps in (("gemmaserve/replica-0", 0.30, 50.0), ("gemmaserve/replica-1", 0.10, 20.0),
                           ("deepinfra/bf16", 0.20, 90.0)):
        stats[tag].started()
        stats[tag].finished(Outcome(at=10.0, ok=True, ttft_s=ttft, tokens_per_s=tps))
    assert tags(router.plan(req({"sort": "latency"}), 11.0)) == [
        "gemmaserve/replica-1", "deepinfra/bf16", "gemmaserve/replica-0", "deepinfra/turbo"]
    assert tags(router.plan(req({"sort": {"by": "throughput", "partition": "model"}}), 11.0))[:3] == [
        "deepinfra/bf16", "gemmaserve/replica-0", "gemmaserve/replica-1"]


def test_models_fallback_list(fleet):
    _, _, router = fleet
    plan = router.plan(req(models=("foo/unknown", OTHER, GEMMA)), 0)
    assert plan[0] == (OTHER, plan[0][1]) and plan[0][1].tag == "acme"
    assert [m for m, _ in plan[1:]] == [GEMMA] * 4
    # every gemma endpoint filtered out: the other model still serves
    plan = router.plan(req({"ignore": ["gemmaserve", "deepinfra"]}, models=(GEMMA, OTHER)), 0)
    assert tags(plan) == ["acme"]
    # sort across models (partition none): cheapest first whatever the model
    plan = router.plan(req({"sort": {"by": "price", "partition": "none"}}, models=(OTHER, GEMMA)), 0)
    assert tags(plan)[-1] == "acme"


def test_sticky_session_follows_its_endpoint_while_healthy(fleet):
    _, stats, router = fleet
    r = req(session_key="session:abc")
    first = router.plan(r, 0.0)[0][1]
    router.served(r, first, 0.0)
    other = "gemmaserve/replica-1" if first.tag == "gemmaserve/replica-0" else "gemmaserve/replica-0"
    for _ in range(5):
        stats[first.tag].started()  # busier than the other replica, still chosen
    assert all(tags(router.plan(r, 1.0))[0] == first.tag for _ in range(20))
    stats[first.tag].finished(Outcome(at=2.0, ok=False))  # it failed: the session moves on
    assert tags(router.plan(r, 3.0))[0] == other
    router.served(r, first, 0.0)
    assert router._sticky_tag("session:abc", 599.0) == first.tag
    assert router._sticky_tag("session:abc", 700.0) is None  # ~10 minutes unused: forgotten


def test_provider_prefs_validation():
    for bad, param in (("x", "provider"), ({"only": "a"}, "provider.only"), ({"sort": "speed"}, "provider.sort"),
                       ({"max_price": {"prompt": "cheap"}}, "provider.max_price.prompt"),
                       ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
                       ({"quantizations": ["int3"]}, "provider.quantizations")):
        with pytest.raises(RoutingError) as e:
            ProviderPrefs.parse(bad)
        assert e.value.status == 400 and e.value.param == param


def test_route_request_reads_body():
    body = {"model": GEMMA, "models": [OTHER, GEMMA], "temperature": 0.5, "tools": [],
            "messages": [{"role": "user", "content": "hi"}], "session_id": "s1", "provider": {"sort": "price"}}
    r = route_request(body, {}, GEMMA)
    assert r.models == (GEMMA, OTHER) and r.parameters == {"temperature", "tools"}
    assert r.session_key == "session:s1" and r.prefs.sort == "price"
    assert route_request({"messages": []}, {"x-session-id": "h"}, GEMMA).session_key == "session:h"
    assert route_request({}, {}, GEMMA).models == (GEMMA,)
    long = "x" * PREFIX_CHARS
    a = route_request({"messages": [{"role": "system", "content": long}, {"role": "user", "content": "a"}]}, {}, GEMMA)
    b = route_request({"messages": [{"role": "system", "content": long}, {"role": "user", "content": "b"}]}, {}, GEMMA)
    assert a.session_key is not None and a.session_key == b.session_key
    assert route_request({"messages": [{"role": "user", "content": "short"}]}, {}, GEMMA).session_key is None
    assert route_request({"prompt": "abcd" * 10}, {}, GEMMA, count_tokens=lambda t: 7).prompt_tokens == 7
    with pytest.raises(RoutingError):
        route_request({"models": "x"}, {}, GEMMA)


def test_stats_windows_and_outages():
    st = EndpointStats()
    assert st.report(0.0)["uptime_last_5m"] is None
    for i in range(9):
        st.started()
        st.finished(Outcome(at=float(i), ok=True, ttft_s=0.01 * (i + 1), tokens_per_s=10.0 * (i + 1)))
    st.started()
    st.finished(Outcome(at=9.0, ok=False))
    rep_ = st.report(10.0)
    assert rep_["uptime_last_5m"] == 90.0 and rep_["in_flight"] == 0
    assert rep_["latency_last_30m"]["p50"] == pytest.approx(50.0) and rep_["throughput_last_30m"]["p99"] == 90.0
    assert st.uptime(10.0 + 400, 300) is None and st.uptime(410.0, 1800) == 90.0
    st.set_health(False, now=11.0, wall=1000.0)
    st.set_health(True, now=15.0, wall=1004.0)
    assert st.report(16.0)["outages"] == [{"start": 1000.0, "end": 1004.0}]
    assert percentiles([3.0, 1.0, 2.0, 4.0]) == {"p50": 2.0, "p75": 3.0, "p90": 4.0, "p99": 4.0}


def test_providers_file(tmp_path):
    (tmp_path / "key").write_text("sk-secret\n")
    f = tmp_path / "providers.json"
    f.write_text('{"providers": [{"tag": "openrouter/deepinfra", "base_url": "https://openrouter.ai/api/v1/",'
                 ' "api_key_file": "key", "model": "google/gemma-4-26b-a4b-it", "prompt_price": 0.1,'
                 ' "completion_price": 0.4, "quantization": "bf16", "context_length": 131072}]}')
    [ep] = load_providers(f, M)
    assert ep.base_url == "https://openrouter.ai/api/v1" and ep.api_key == "sk-secret" and ep.models == M
    assert ep.context_length == 131072 and not ep.is_replica and "sk-secret" not in repr(ep)
    f.write_text('{"providers": [{"tag": "a", "base_url": "http://x", "colour": "red"}]}')
    with pytest.raises(ValueError, match="unknown keys"):
        load_providers(f, M)
    f.write_text('{"providers": [{"tag": "a", "base_url": "http://x", "quantization": "q3"}]}')
    with pytest.raises(ValueError, match="quantization"):
        load_providers(f, M)
