"""Wire types of POST /api/beta/batches (OpenRouter's batch API, platform spec §6)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gemmaserve.protocol.common import WIRE_CONFIG

# The generation endpoints a batch may target, as OpenRouter names them, and the paths that serve them.
BATCH_ENDPOINTS = {
    "/v1/chat/completions": "/api/v1/chat/completions",
    "/v1/completions": "/api/v1/completions",
    "/v1/responses": "/api/v1/responses",
    "/v1/messages": "/api/v1/messages",
}


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    custom_id: Annotated[str, Field(min_length=1, max_length=256)]
    body: dict[str, Any]


class BatchCreateRequest(BaseModel):
    """Body of POST /api/beta/batches: one endpoint, up to the server's item limit."""

    model_config = WIRE_CONFIG

    endpoint: str
    model: str | None = None
    requests: Annotated[list[BatchItem], Field(min_length=1)]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = None

    @field_validator("endpoint")
    @classmethod
    def _known_endpoint(cls, v: str) -> str:
        v = v.removeprefix("/api")
        if v not in BATCH_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}")
        return v

    @field_validator("requests")
    @classmethod
    def _unique_ids(cls, v: list[BatchItem]) -> list[BatchItem]:
        seen: set[str] = set()
        for item in v:
            if item.custom_id in seen:
                raise ValueError(f"custom_id '{item.custom_id}' appears more than once")
            seen.add(item.custom_id)
        return v
