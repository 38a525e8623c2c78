"""Latency statistics for streamed requests: TTFT, TPOT, ITL, E2EL and throughput, vLLM-style."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


@dataclass
class RequestRecord:
    """What the client saw of one streamed request. Times are seconds on one monotonic clock."""

    start: float  # request sent
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk carrying output
    end: float = 0.0  # stream closed
    prompt_tokens: int = 0
    output_tokens: int = 0  # from the server's usage when reported, else the chunk count
    success: bool = True
    error: str | None = None
    # One of the first `concurrency` requests, all sent at t=0 (the burst); False for a request sent
    # when an earlier one finished, so concurrency - 1 others were in flight (the steady state).
    burst: bool = False

    @property
    def ttft(self) -> float | None:
        """Time to first token: request sent -> first chunk with output."""
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2el(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first, as vLLM defines it:
        (e2el - ttft) / (output_tokens - 1); undefined for a single token."""
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive output chunks (one chunk may hold several tokens when the
        server holds text back, e.g. an incomplete UTF-8 character)."""
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks, the same
    definition as numpy.percentile's default, so numbers compare with vLLM's tooling."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside 0..100")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def distribution(
    values: Sequence[float], percentiles: Iterable[float] = DEFAULT_PERCENTILES, scale: float = 1.0
) -> dict[str, float | None]:
    """mean / median / std / chosen percentiles of `values`, each multiplied by `scale`
    (1000 turns seconds into the milliseconds the field reports)."""
    out: dict[str, float | None] = {}
    if not values:
        out.update(mean=None, median=None, std=None)
        for q in percentiles:
            out[f"p{_qname(q)}"] = None
        return out
    out["mean"] = statistics.fmean(values) * scale
    out["median"] = percentile(values, 50.0) * scale
    # Population std, as numpy's default (ddof=0) that vLLM prints.
    out["std"] = statistics.pstdev(values) * scale
    for q in percentiles:
        out[f"p{_qname(q)}"] = percentile(values, q) * scale
    return out


def _qname(q: float) -> str:
    return str(int(q)) if float(q).is_integer() else str(q).replace(".", "_")


def summarize(
    records: Sequence[RequestRecord], duration: float, percentiles: Iterable[float] = DEFAULT_PERCENTILES
) -> dict[str, Any]:
    """One JSON-ready summary of a run of `duration` seconds (first send -> last close).
    Latencies in milliseconds, throughputs per second, over successful requests only."""
    if duration <= 0:
        raise ValueError("duration must be positive")
    pcts = tuple(percentiles)
    ok = [r for r in records if r.success]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tpots = [r.tpot for r in ok if r.tpot is not None]
    itls = [gap for r in ok for gap in r.itls]
    burst = [r.ttft for r in ok if r.burst and r.ttft is not None]
    steady = [r.ttft for r in ok if not r.burst and r.ttft is not None]
    return {
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": sorted({r.error for r in records if r.error})[:5],
        "duration_s": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "ttft_ms": distribution(ttfts, pcts, 1000.0),
        "tpot_ms": distribution(tpots, pcts, 1000.0),
        "itl_ms": distribution(itls, pcts, 1000.0),
        "e2el_ms": distribution([r.e2el for r in ok], pcts, 1000.0),
        # TTFT split by arrival: a burst of `concurrency` requests at t=0 queues behind each other's
        # prefills; later requests arrive one at a time beside running decodes (vllm bench serve's
        # --max-concurrency steady state). Every request is in exactly one window; failed ones are
        # counted there, not dropped.
        "ttft_burst_ms": distribution(burst, pcts, 1000.0),
        "ttft_steady_ms": distribution(steady, pcts, 1000.0),
        "ttft_windows": {
            "burst": {"requests": "the first `concurrency` requests, all sent at t=0",
                      "completed": len(burst), "failed": sum(1 for r in records if r.burst and not r.success)},
            "steady": {"requests": "each sent when an earlier request finished (concurrency - 1 others in flight)",
                       "completed": len(steady), "failed": sum(1 for r in records if not r.burst and not r.success)},
        },
    }  # fmt: skip


# Headline fields a ratio table compares, with whether larger is better.
RATIO_FIELDS: dict[str, bool] = {
    "output_throughput": True,
    "request_throughput": True,
    "ttft_ms.median": False,
    "tpot_ms.median": False,
    "itl_ms.median": False,
    "e2el_ms.median": False,
}


def lookup(summary: dict[str, Any], dotted: str) -> Any:
    node: Any = summary
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def ratios(candidate: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """candidate / baseline for each headline field (for latencies a ratio < 1 means faster)."""
    out: dict[str, float | None] = {}
    for key in RATIO_FIELDS:
        a, b = lookup(candidate, key), lookup(baseline, key)
        out[key] = (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
    return out


def median_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Field-by-field median of repeated summaries of the same workload (numbers only; lists and
    strings come from the first run), so one noisy repetition does not move the headline."""
    if not runs:
        raise ValueError("no runs")
    if len(runs) == 1:
        return runs[0]

    def merge(nodes: list[Any]) -> Any:
        first = nodes[0]
        if isinstance(first, dict):
            return {k: merge([n.get(k) if isinstance(n, dict) else None for n in nodes]) for k in first}
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            nums = [n for n in nodes if isinstance(n, (int, float))]
            return statistics.median(nums) if nums else None
        return first

    return merge(list(runs))
