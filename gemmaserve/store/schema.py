"""The store's tables as SQLAlchemy 2 declarative models (the migrations in migrations/ create them)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend: SQLite keeps no zone, so values are stored
    naive-in-UTC and handed back aware; PostgreSQL's `timestamp` column is used the same way so
    both backends compare and group identically."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass UTC-aware datetimes")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """A key made through the management API or `gemmaserve keys create`. Only the sha256 of the
    plaintext is kept; `label` is the masked plaintext shown back to users (OpenRouter's form)."""

    __tablename__ = "api_keys"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    label: Mapped[str] = mapped_column(String(64), default="")
    is_management: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    limit: Mapped[float | None] = mapped_column("limit_usd", Float, nullable=True)  # USD; None = unlimited
    limit_reset: Mapped[str | None] = mapped_column(String(16), nullable=True)  # daily|weekly|monthly|None
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)  # requests per minute
    rate_limit_rpd: Mapped[int | None] = mapped_column(Integer, nullable=True)  # requests per UTC day
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Generation(Base):
    """One finished (or cancelled / failed) generation: the /generation record, the key's charge
    (`total_cost`, summed for usage) and the activity row. Keys are referenced by hash without a
    foreign key: a deleted key's history stays billed and visible in /activity."""

    __tablename__ = "generations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    api_key_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str] = mapped_column(String(200))
    api_type: Mapped[str] = mapped_column(String(32))  # completions | responses | messages | ...
    provider_name: Mapped[str] = mapped_column(String(100))
    upstream_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    native_finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    tokens_prompt: Mapped[int] = mapped_column(Integer, default=0)
    tokens_completion: Mapped[int] = mapped_column(Integer, default=0)
    tokens_reasoning: Mapped[int] = mapped_column(Integer, default=0)
    tokens_cached: Mapped[int] = mapped_column(Integer, default=0)
    total_cost: Mapped[float] = mapped_column(Float, default=0.0)  # USD charged (0 under insurance)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)  # request start -> end
    generation_time_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)  # first token -> end
    http_referer: Mapped[str | None] = mapped_column(String(500), nullable=True)
    app_title: Mapped[str | None] = mapped_column(String(200), nullable=True)
    origin: Mapped[str | None] = mapped_column(String(500), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(500), nullable=True)
    external_user: Mapped[str | None] = mapped_column(String(200), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (
        Index("ix_generations_created_at", "created_at"),
        Index("ix_generations_key_created", "api_key_hash", "created_at"),
    )


class GenerationContent(Base):
    """Prompt and completion of a generation, kept only when the operator turns content storage on."""

    __tablename__ = "generation_content"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    input: Mapped[dict] = mapped_column(JSON)  # {"messages": [...]} or {"prompt": ...}
    output: Mapped[dict] = mapped_column(JSON)  # {"completion": str, "reasoning": str | None}
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class RequestOutcome(Base):
    """One answered inference request, rejected ones included (401, 402, 429...): the raw material
    of the live endpoint stats (uptime, TTFT, throughput) and the uptime chart."""

    __tablename__ = "request_outcomes"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[int] = mapped_column(Integer)  # HTTP status (200 for a stream that ended in-band)
    # OpenRouter's uptime error: 401/402/404/5xx, mid-stream errors, 200s finishing with an error.
    # None = not counted at all (400, 413, 429 and other client mistakes).
    is_error: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)  # queueing included
    tokens_completion: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_request_outcomes_created_at", "created_at"),)


class BatchRow(Base):
    """A /api/beta/batches job: its header (status, counts, cost, timestamps: the batch object less
    its items and results) and its items, written once. Results are rows of their own, so a
    finished item is one small insert, not a rewrite of the batch."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    header: Mapped[dict] = mapped_column(JSON)
    items: Mapped[list] = mapped_column(JSON)  # [{custom_id, body}] in input order


class BatchResultRow(Base):
    """One finished batch item: {custom_id, response: {status_code, body}, error}."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    result: Mapped[dict] = mapped_column(JSON)
