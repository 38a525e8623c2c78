"""Wire types of the key-management API (POST /api/v1/keys, PATCH /api/v1/keys/{hash})."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from gemmaserve.protocol.common import WIRE_CONFIG

LimitReset = Literal["daily", "weekly", "monthly"]
NonNegative = Annotated[float, Field(ge=0.0)]
Positive = Annotated[int, Field(ge=1)]


def _utc(value: datetime | None) -> datetime | None:
    # OpenRouter takes UTC ISO timestamps; a timestamp without a zone is read as UTC.
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class CreateKeyRequest(BaseModel):
    """OpenRouter's create body; `rate_limit_rpm` / `rate_limit_rpd` are gemmaserve's optional
    per-key request limits (per minute / per UTC day). Workspace and BYOK fields are accepted and
    have no effect on a single server."""

    model_config = WIRE_CONFIG

    name: Annotated[str, Field(min_length=1, max_length=200)]
    limit: NonNegative | None = None
    limit_reset: LimitReset | None = None
    expires_at: datetime | None = None
    include_byok_in_limit: bool | None = None
    workspace_id: str | None = None
    creator_user_id: str | None = None
    rate_limit_rpm: Positive | None = None
    rate_limit_rpd: Positive | None = None

    _expires_utc = field_validator("expires_at")(_utc)


class UpdateKeyRequest(BaseModel):
    """OpenRouter's PATCH body: only the fields present change (an explicit null clears a limit)."""

    model_config = WIRE_CONFIG

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    disabled: bool | None = None
    limit: NonNegative | None = None
    limit_reset: LimitReset | None = None
    expires_at: datetime | None = None
    include_byok_in_limit: bool | None = None
    rate_limit_rpm: Positive | None = None
    rate_limit_rpd: Positive | None = None

    _expires_utc = field_validator("expires_at")(_utc)

    def changes(self) -> dict:
        """The KeyRecord fields this body sets (name and disabled cannot be cleared)."""
        settable = ("name", "disabled", "limit", "limit_reset", "expires_at", "rate_limit_rpm", "rate_limit_rpd")
        out = {f: getattr(self, f) for f in settable if f in self.model_fields_set}
        for f in ("name", "disabled"):
            if f in out and out[f] is None:
                del out[f]
        return out
