"""Live per-endpoint statistics (OpenRouter's uptime, latency and throughput windows), the load
the router balances on, and the outages the health probe saw."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOWS_S = {"5m": 300.0, "30m": 1800.0, "1d": 86400.0}
PERCENTILES = (50, 75, 90, 99)


@dataclass(frozen=True)
class Outcome:
    """One finished attempt on an endpoint. ok=False for what OpenRouter's uptime counts as an
    error (5xx, 401/402/404, mid-stream errors, a lost replica), never for 400/413/429."""

    at: float  # monotonic seconds
    ok: bool
    ttft_s: float | None = None
    tokens_per_s: float | None = None


def percentiles(values: list[float]) -> dict[str, float] | None:
    """Nearest-rank p50/p75/p90/p99, or None without data."""
    if not values:
        return None
    s = sorted(values)
    return {f"p{p}": s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))] for p in PERCENTILES}


@dataclass
class EndpointStats:
    """One endpoint's rolling record. Invariant: `in_flight` counts attempts started and not yet
    finished (the router's load signal); samples older than the longest window are dropped."""

    max_samples: int = 50_000
    in_flight: int = 0
    last_failure: float | None = None
    healthy: bool = True
    samples: deque[Outcome] = field(default_factory=deque)
    outages: list[dict[str, float | None]] = field(default_factory=list)  # {start, end} (wall clock)

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, outcome: Outcome | None) -> None:
        """End an attempt; None for one uptime does not count (429s, a client that left)."""
        self.in_flight = max(0, self.in_flight - 1)
        if outcome is None:
            return
        self.samples.append(outcome)
        if not outcome.ok:
            self.last_failure = outcome.at
        horizon = outcome.at - max(WINDOWS_S.values())
        while self.samples and (self.samples[0].at < horizon or len(self.samples) > self.max_samples):
            self.samples.popleft()

    def set_health(self, healthy: bool, now: float, wall: float) -> None:
        """Record a health-probe result; a healthy -> down transition opens an outage."""
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if not healthy:
            self.last_failure = now
            self.outages.append({"start": wall, "end": None})
            del self.outages[:-20]  # the recent ones are what a reader needs
        elif self.outages and self.outages[-1]["end"] is None:
            self.outages[-1]["end"] = wall

    def recently_failed(self, now: float, cooldown_s: float) -> bool:
        return not self.healthy or (self.last_failure is not None and now - self.last_failure < cooldown_s)

    def _window(self, now: float, seconds: float) -> list[Outcome]:
        return [o for o in self.samples if now - o.at <= seconds]

    def uptime(self, now: float, seconds: float, min_samples: int = 1) -> float | None:
        """Percent of attempts that did not fail; None with fewer than `min_samples` attempts."""
        w = self._window(now, seconds)
        if len(w) < min_samples:
            return None
        return 100.0 * sum(o.ok for o in w) / len(w)

    def latency_ms(self, now: float, seconds: float) -> dict[str, float] | None:
        return percentiles([o.ttft_s * 1000 for o in self._window(now, seconds) if o.ttft_s is not None])

    def throughput(self, now: float, seconds: float) -> dict[str, float] | None:
        return percentiles([o.tokens_per_s for o in self._window(now, seconds) if o.tokens_per_s is not None])

    def p50(self, now: float, what: str) -> float | None:
        """p50 over the last 30 minutes of `latency` (ms) or `throughput` (tok/s), for sorting."""
        got = self.latency_ms(now, WINDOWS_S["30m"]) if what == "latency" else self.throughput(now, WINDOWS_S["30m"])
        return None if got is None else got["p50"]

    def report(self, now: float, min_samples: int = 1) -> dict[str, Any]:
        """OpenRouter's live endpoint fields (spec platform §5), plus the load and outages."""
        out: dict[str, Any] = {f"uptime_last_{k}": self.uptime(now, s, min_samples) for k, s in WINDOWS_S.items()}
        out["latency_last_30m"] = self.latency_ms(now, WINDOWS_S["30m"])
        out["throughput_last_30m"] = self.throughput(now, WINDOWS_S["30m"])
        out["status"] = 0 if self.healthy else -3
        out["in_flight"] = self.in_flight
        out["requests_last_30m"] = len(self._window(now, WINDOWS_S["30m"]))
        out["outages"] = [dict(o) for o in self.outages]
        return out


class StatsBook:
    """EndpointStats by endpoint tag, created on first use."""

    def __init__(self) -> None:
        self._by_tag: dict[str, EndpointStats] = {}

    def __getitem__(self, tag: str) -> EndpointStats:
        st = self._by_tag.get(tag)
        if st is None:
            st = self._by_tag[tag] = EndpointStats()
        return st
