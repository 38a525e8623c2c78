"""Accounting: the one place a generation is written down. `Ledger.open` runs before the engine
sees a request (reserve against a key's limit; raise APIError to refuse), `Ledger.close` exactly
once on every exit path (finish, in-band error, engine refusal, client gone, bug): record, charge,
release. The default `MemoryLedger` keeps the /generation records and feeds the token metrics; a
durable store replaces it on ServerState.ledger, nothing else changes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gemmaserve.api.errors import APIError
from gemmaserve.api.metrics import ServerMetrics
from gemmaserve.api.usage import GenerationStore, TokenCounts, usage_object
from gemmaserve.config import ServerConfig

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
        usage = usage_object(counts, cfg.prompt_price_per_m * f, cfg.completion_price_per_m * f)
        if outcome.error is not None and not outcome.started and not outcome.cancelled:
            return usage  # refused before any work (queue full, prompt too long): nothing to record
        now = time.monotonic()
        t_start = run.t_start if run is not None else now
        t_first = run.t_first if run is not None else None
        self.metrics.observe_tokens(counts.prompt, counts.completion, run.ttft if run else None,
                                    run.tpot if run else None)
        self.generations.put(gen.gen_id, generation_record(gen, outcome, usage, cfg,
                                                           latency_ms=int((now - t_start) * 1000),
                                                           gen_ms=int((now - t_first) * 1000) if t_first else 0))
        return usage


def generation_record(gen: "Generation", outcome: Outcome, usage: dict[str, Any], cfg: ServerConfig, *,
                      latency_ms: int, gen_ms: int) -> dict[str, Any]:
    """The /generation record (spec §8.1)."""
    counts, headers = outcome.counts, gen.headers
    return {
        "id": gen.gen_id,
        "upstream_id": gen.gen_id,
        "request_id": gen.gen_id,
        "total_cost": usage["cost"],
        "usage": usage["cost"],
        "cache_discount": None,
        "upstream_inference_cost": usage["cost"],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(gen.created)) + "Z",
        "model": gen.model or cfg.response_model,
        "app_id": None,
        "streamed": outcome.streamed,
        "cancelled": outcome.cancelled,
        "provider_name": cfg.provider_name,
        "latency": latency_ms,
        "generation_time": gen_ms,
        "moderation_latency": None,
        "finish_reason": outcome.finish_reason,
        "native_finish_reason": outcome.native_finish_reason,
        "tokens_prompt": counts.prompt,
        "tokens_completion": counts.completion,
        "native_tokens_prompt": counts.prompt,
        "native_tokens_completion": counts.completion,
        "native_tokens_completion_images": 0,
        "native_tokens_reasoning": counts.reasoning,
        "native_tokens_cached": counts.cached,
        "num_media_prompt": None,
        "num_input_audio_prompt": None,
        "num_media_completion": 0,
        "num_search_results": None,
        "num_fetches": None,
        "origin": headers.get("origin", "") if headers is not None else "",
        "http_referer": headers.get("http-referer") if headers is not None else None,
        "user_agent": headers.get("user-agent") if headers is not None else None,
        "external_user": gen.user,
        "is_byok": False,
        "api_type": gen.endpoint,
        "router": None,
        "preset_id": None,
        "session_id": gen.session_id,
        "service_tier": None,
        "data_region": None,
        "workspace_id": None,
        "response_cache_source_id": None,
        "web_search_engine": None,
        "provider_responses": [],
    }
