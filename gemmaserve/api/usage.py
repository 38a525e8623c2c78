"""Usage and cost objects (spec §3.2), the /generation object (spec §8.1), and the in-memory
record map behind it when the server keeps no store."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gemmaserve.store import GenerationRecord

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class TokenCounts:
    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0


def _cost(tokens: int, price_per_m: float) -> Decimal:
    # Decimal so 1000 x $0.06/M prints as 0.00006, not 5.999999999999999e-05.
    return Decimal(str(price_per_m)) * tokens / _MILLION


def cost_parts(counts: TokenCounts, prompt_price_per_m: float, completion_price_per_m: float):
    prompt_cost = _cost(counts.prompt, prompt_price_per_m)
    completion_cost = _cost(counts.completion, completion_price_per_m)
    return float(prompt_cost + completion_cost), float(prompt_cost), float(completion_cost)


def usage_object(counts: TokenCounts, prompt_price_per_m: float, completion_price_per_m: float) -> dict[str, Any]:
    """The full usage object with every field present, zeros included (clients parse them as numbers)."""
    total, prompt_cost, completion_cost = cost_parts(counts, prompt_price_per_m, completion_price_per_m)
    return {
        "prompt_tokens": counts.prompt,
        "completion_tokens": counts.completion,
        "total_tokens": counts.prompt + counts.completion,
        "cost": total,
        "is_byok": False,
        "prompt_tokens_details": {
            "cached_tokens": counts.cached,
            "cache_write_tokens": 0,
            "audio_tokens": 0,
            "video_tokens": 0,
        },
        "cost_details": {
            "upstream_inference_cost": total,
            "upstream_inference_prompt_cost": prompt_cost,
            "upstream_inference_completions_cost": completion_cost,
        },
        "completion_tokens_details": {"reasoning_tokens": counts.reasoning, "image_tokens": 0, "audio_tokens": 0},
    }


def insured(counts: TokenCounts, finish_reason: str | None) -> bool:
    """Zero-completion insurance (platform spec §4): no charge when nothing was generated and the
    request ended without a proper finish (an error, or none at all)."""
    return counts.completion == 0 and finish_reason in (None, "error")


def charged_usage(counts: TokenCounts, finish_reason: str | None, prompt_price_per_m: float,
                  completion_price_per_m: float) -> dict[str, Any]:
    """The usage object with what is actually charged: zero cost under the insurance."""
    usage = usage_object(counts, prompt_price_per_m, completion_price_per_m)
    if insured(counts, finish_reason):
        usage["cost"] = 0.0
        usage["cost_details"] = {k: 0.0 for k in usage["cost_details"]}
    return usage


def generation_object(rec: GenerationRecord) -> dict[str, Any]:
    """GET /generation's `data` (spec §8.1) for a stored record; every field present."""
    return {
        "id": rec.id,
        "upstream_id": rec.upstream_id,
        "request_id": rec.upstream_id,
        "total_cost": rec.total_cost,
        "usage": rec.total_cost,
        "cache_discount": None,
        "upstream_inference_cost": rec.total_cost,
        "created_at": rec.created_at.strftime("%Y-%m-%dT%H:%M:%S") + "Z",
        "model": rec.model,
        "app_id": None,
        "streamed": rec.streamed,
        "cancelled": rec.cancelled,
        "provider_name": rec.provider_name,
        "latency": rec.latency_ms,
        "generation_time": rec.generation_time_ms,
        "moderation_latency": None,
        "finish_reason": rec.finish_reason,
        "native_finish_reason": rec.native_finish_reason,
        "tokens_prompt": rec.tokens_prompt,
        "tokens_completion": rec.tokens_completion,
        "native_tokens_prompt": rec.tokens_prompt,
        "native_tokens_completion": rec.tokens_completion,
        "native_tokens_completion_images": 0,
        "native_tokens_reasoning": rec.tokens_reasoning,
        "native_tokens_cached": rec.tokens_cached,
        "num_media_prompt": None,
        "num_input_audio_prompt": None,
        "num_media_completion": 0,
        "num_search_results": None,
        "num_fetches": None,
        "origin": rec.origin,
        "http_referer": rec.http_referer,
        "app_title": rec.app_title,  # gemmaserve: the X-OpenRouter-Title / X-Title the app sent
        "user_agent": rec.user_agent,
        "external_user": rec.external_user,
        "is_byok": False,
        "api_type": rec.api_type,
        "router": None,
        "preset_id": None,
        "session_id": rec.session_id,
        "service_tier": None,
        "data_region": None,
        "workspace_id": None,
        "response_cache_source_id": None,
        "web_search_engine": None,
        "provider_responses": [],
    }


class GenerationStore:
    """Bounded id -> stats map; the oldest records go first so memory stays flat under load."""

    def __init__(self, capacity: int = 10_000):
        self.capacity = capacity
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, gen_id: str, record: dict[str, Any]) -> None:
        self._items[gen_id] = record
        self._items.move_to_end(gen_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, gen_id: str) -> dict[str, Any] | None:
        return self._items.get(gen_id)

    def __len__(self) -> int:
        return len(self._items)
