"""API keys as values: plaintext minting, hashing, masking, and the immutable record the server caches."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import datetime

from gemmaserve.store.schema import ApiKey

KEY_PREFIX = "sk-gs-v1-"
LIMIT_RESETS = (None, "daily", "weekly", "monthly")


def hash_key(plaintext: str) -> str:
    """sha256 hex of the key: the only form in which a key is ever stored."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def new_plaintext() -> str:
    return KEY_PREFIX + secrets.token_hex(32)


def mask(plaintext: str) -> str:
    """OpenRouter's label form: the prefix and the last three characters (`sk-or-v1-au7...890`)."""
    return f"{plaintext[:len(KEY_PREFIX) + 3]}...{plaintext[-3:]}" if len(plaintext) > 16 else "***"


@dataclass(frozen=True)
class KeyRecord:
    """A key as the server sees it; changes make a new record (the cache swaps whole records)."""

    hash: str
    name: str
    label: str
    is_management: bool = False
    disabled: bool = False
    limit: float | None = None  # USD; None = unlimited
    limit_reset: str | None = None  # daily | weekly | monthly | None (never resets)
    rate_limit_rpm: int | None = None
    rate_limit_rpd: int | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.limit_reset not in LIMIT_RESETS:
            raise ValueError(f"limit_reset must be one of daily, weekly, monthly or null, got {self.limit_reset!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be non-negative")
        for name in ("rate_limit_rpm", "rate_limit_rpd"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def with_changes(self, **changes) -> "KeyRecord":
        return replace(self, **changes)

    @classmethod
    def from_row(cls, row: ApiKey) -> "KeyRecord":
        return cls(hash=row.hash, name=row.name, label=row.label, is_management=row.is_management,
                   disabled=row.disabled, limit=row.limit, limit_reset=row.limit_reset,
                   rate_limit_rpm=row.rate_limit_rpm, rate_limit_rpd=row.rate_limit_rpd,
                   expires_at=row.expires_at, created_at=row.created_at, updated_at=row.updated_at)

    def to_row(self) -> ApiKey:
        return ApiKey(hash=self.hash, name=self.name, label=self.label, is_management=self.is_management,
                      disabled=self.disabled, limit=self.limit, limit_reset=self.limit_reset,
                      rate_limit_rpm=self.rate_limit_rpm, rate_limit_rpd=self.rate_limit_rpd,
                      expires_at=self.expires_at, created_at=self.created_at, updated_at=self.updated_at)
