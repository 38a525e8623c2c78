"""Prometheus metrics for GET /metrics, on a registry owned by one app (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gemmaserve.engine.client import EngineStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gemmaserve_requests", "HTTP API requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("gemmaserve_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("gemmaserve_completion_tokens", "Completion tokens generated", registry=r)
        self.ttft = Histogram(
            "gemmaserve_time_to_first_token_seconds", "Request arrival to first generated token",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tpot = Histogram(
            "gemmaserve_time_per_output_token_seconds", "Mean gap between generated tokens of a request",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("gemmaserve_num_requests_waiting", "Requests waiting to be scheduled", registry=r)
        self.running = Gauge("gemmaserve_num_requests_running", "Requests being generated", registry=r)
        self.kv_usage = Gauge("gemmaserve_kv_cache_usage_ratio", "Fraction of KV blocks in use (0..1)", registry=r)
        self.preemptions = Gauge("gemmaserve_num_preemptions", "Preemptions since start", registry=r)
        self.prefix_hit_rate = Gauge("gemmaserve_prefix_cache_hit_rate", "Prefix cache hit rate", registry=r)

    def observe_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def observe_tokens(self, prompt: int, completion: int, ttft_s: float | None, tpot_s: float | None) -> None:
        self.prompt_tokens.inc(prompt)
        self.completion_tokens.inc(completion)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if tpot_s is not None:
            self.tpot.observe(tpot_s)

    def render(self, stats: EngineStats | None) -> bytes:
        # Engine gauges are read at scrape time: they are a snapshot, not events.
        if stats is not None:
            self.queue_depth.set(stats.num_waiting)
            self.running.set(stats.num_running)
            self.kv_usage.set(stats.kv_usage)
            self.preemptions.set(stats.num_preemptions)
            self.prefix_hit_rate.set(stats.prefix_cache_hit_rate)
        return generate_latest(self.registry)
