"""Usage and cost objects (spec §3.2) and the store behind GET /generation (spec §8.1)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

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
