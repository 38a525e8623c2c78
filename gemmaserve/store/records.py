"""What the server hands the store: one finished generation, one request outcome, stored content."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from gemmaserve.store.schema import Generation, GenerationContent, RequestOutcome


@dataclass(frozen=True)
class GenerationRecord:
    """One generation as billed: the fields of GET /generation that are not constants."""

    id: str
    created_at: datetime  # UTC; also the instant the charge lands in (its day/week/month)
    api_key_hash: str | None
    model: str
    api_type: str
    provider_name: str
    upstream_id: str | None = None
    streamed: bool = False
    cancelled: bool = False
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    tokens_prompt: int = 0
    tokens_completion: int = 0
    tokens_reasoning: int = 0
    tokens_cached: int = 0
    total_cost: float = 0.0
    latency_ms: int | None = None
    generation_time_ms: int | None = None
    http_referer: str | None = None
    app_title: str | None = None
    origin: str | None = None
    user_agent: str | None = None
    external_user: str | None = None
    session_id: str | None = None

    def to_row(self) -> Generation:
        return Generation(**asdict(self))

    @classmethod
    def from_row(cls, row: Generation) -> "GenerationRecord":
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})


def uptime_error(status: int, finish_reason: str | None = None) -> bool | None:
    """OpenRouter's uptime rule (platform spec §5): 401, 402, 404, 5xx and answers that end in an
    error count against uptime; 400, 413, 429 and other client mistakes are not counted (None)."""
    if status in (401, 402, 404) or status >= 500:
        return True
    if status >= 400:
        return None
    return finish_reason == "error"


@dataclass(frozen=True)
class Outcome:
    """One answered inference request, for the live stats."""

    created_at: datetime
    status: int
    finish_reason: str | None = None
    ttft_ms: int | None = None
    duration_ms: int | None = None  # request arrival to last token: queueing included
    tokens_completion: int = 0

    def to_row(self) -> RequestOutcome:
        return RequestOutcome(created_at=self.created_at, status=self.status,
                              is_error=uptime_error(self.status, self.finish_reason), ttft_ms=self.ttft_ms,
                              duration_ms=self.duration_ms, tokens_completion=self.tokens_completion)


@dataclass(frozen=True)
class Content:
    """A generation's prompt and output (kept only with content storage on)."""

    input: dict[str, Any]  # {"messages": [...]} or {"prompt": "..."}
    completion: str
    reasoning: str | None = None
    error: str | None = None

    def to_row(self, gen_id: str) -> GenerationContent:
        return GenerationContent(id=gen_id, input=self.input,
                                 output={"completion": self.completion, "reasoning": self.reasoning},
                                 error=self.error)
