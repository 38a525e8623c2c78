"""Accounting: the one place a generation is written down. `Ledger.open` runs before the engine
sees a request (reserve against a key's limit; raise APIError to refuse), `Ledger.close` exactly
once on every exit path (finish, in-band error, engine refusal, client gone, bug): record, charge,
release. The default `MemoryLedger` keeps the /generation records and feeds the token metrics; a
durable store replaces it on ServerState.ledger, nothing else changes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from gemmaserve.api.errors import APIError
from gemmaserve.api.metrics import ServerMetrics
from gemmaserve.api.usage import GenerationStore, TokenCounts, charged_usage, generation_object
from gemmaserve.config import ServerConfig
from gemmaserve.store import GenerationRecord

if TYPE_CHECKING:
    from gemmaserve.api.engine_run import EngineRun
    from gemmaserve.api.generation import Generation


@dataclass(frozen=True)
class Outcome:
    """How one generation ended, as the ledger sees it."""

    finish_reason: str | None  # OpenRouter's normalised reason (None: cut off before one existed)
    native_finish_reason: str | None
    streamed: bool
    cancelled: bool  # the client left before the end
    counts: TokenCounts
    started: bool  # the engine produced output (False: refused at submission, or never reached)
    error: APIError | None = None


class Ledger(Protocol):
    def open(self, gen: "Generation") -> None:
        """Reserve what the request may spend; raise APIError (e.g. 402) to refuse it."""

    def close(self, gen: "Generation", run: "EngineRun | None", outcome: Outcome) -> dict[str, Any]:
        """Record, charge and release; return the usage object the response carries."""


class MemoryLedger:
    """In-process records (bounded, oldest dropped) and Prometheus token metrics."""

    def __init__(self, config: ServerConfig, generations: GenerationStore, metrics: ServerMetrics) -> None:
        self.config = config
        self.generations = generations
        self.metrics = metrics

    def open(self, gen: "Generation") -> None:
        return None  # no limits to reserve against in memory

    def close(self, gen: "Generation", run: "EngineRun | None", outcome: Outcome) -> dict[str, Any]:
        cfg = self.config
        counts = outcome.counts
        f = gen.price_factor
        usage = charged_usage(counts, outcome.finish_reason, cfg.prompt_price_per_m * f, cfg.completion_price_per_m * f)
        if outcome.error is not None and not outcome.started and not outcome.cancelled:
            return usage  # refused before any work (queue full, prompt too long): nothing to record
        self.metrics.observe_tokens(counts.prompt, counts.completion, run.ttft if run else None,
                                    run.tpot if run else None)
        self.generations.put(gen.gen_id, generation_object(build_record(gen, run, outcome, usage["cost"], cfg)))
        return usage


def build_record(gen: "Generation", run: "EngineRun | None", outcome: Outcome, cost: float,
                 cfg: ServerConfig) -> GenerationRecord:
    """What one generation leaves behind (both ledgers write this), timed now."""
    now = time.monotonic()
    t_start = run.t_start if run is not None else now
    t_first = run.t_first if run is not None else None
    counts, headers = outcome.counts, gen.headers
    return GenerationRecord(
        id=gen.gen_id, created_at=datetime.fromtimestamp(gen.created, timezone.utc), api_key_hash=gen.admission.key_hash,
        model=gen.model or cfg.response_model, api_type=gen.endpoint, provider_name=cfg.provider_name,
        upstream_id=gen.gen_id, streamed=outcome.streamed, cancelled=outcome.cancelled,
        finish_reason=outcome.finish_reason, native_finish_reason=outcome.native_finish_reason,
        tokens_prompt=counts.prompt, tokens_completion=counts.completion, tokens_reasoning=counts.reasoning,
        tokens_cached=counts.cached, total_cost=cost, latency_ms=int((now - t_start) * 1000),
        generation_time_ms=int((now - t_first) * 1000) if t_first is not None else 0,
        http_referer=headers.get("http-referer") if headers is not None else None,
        # App attribution (spec §9): X-OpenRouter-Title names the app; X-Title is the older header.
        app_title=(headers.get("x-openrouter-title") or headers.get("x-title")) if headers is not None else None,
        origin=headers.get("origin", "") if headers is not None else "",
        user_agent=headers.get("user-agent") if headers is not None else None,
        external_user=gen.user, session_id=gen.session_id)
