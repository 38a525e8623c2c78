"""Server settings and the per-app state every endpoint reads (engine, tokenizer, renderer, stores)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from gemmaserve.api.metrics import ServerMetrics
from gemmaserve.api.usage import GenerationStore
from gemmaserve.engine.client import EngineClient

BASE_MODEL_ID = "google/gemma-4-26b-a4b-it"
CANONICAL_SLUG = "google/gemma-4-26b-a4b-it-20260403"
# Variant suffixes OpenRouter lists for this model; they all route to the same weights here.
VARIANT_SUFFIXES = ("", ":free", ":nitro", ":floor")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the HTTP layer needs to know that is not the engine itself."""

    served_model_name: str = BASE_MODEL_ID
    api_key_hashes: frozenset[str] = frozenset()  # sha256 hex of accepted keys; empty = open server
    prompt_price_per_m: float = 0.06  # USD per million prompt tokens
    completion_price_per_m: float = 0.33  # USD per million completion tokens (reasoning included)
    provider_name: str = "gemmaserve"
    keepalive_interval_s: float = 10.0  # `: OPENROUTER PROCESSING` cadence while waiting for a token
    max_body_bytes: int = 8 * 1024 * 1024
    max_stored_generations: int = 10_000
    quantization: str | None = None  # reported on the endpoints listing
    max_completion_tokens: int | None = 32768  # advertised in /models top_provider

    def __post_init__(self) -> None:
        if self.keepalive_interval_s <= 0:
            raise ValueError("keepalive_interval_s must be positive")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.prompt_price_per_m < 0 or self.completion_price_per_m < 0:
            raise ValueError("prices must be non-negative")

    @property
    def accepted_model_ids(self) -> frozenset[str]:
        ids = {self.served_model_name}
        for base in (BASE_MODEL_ID, CANONICAL_SLUG):
            ids.update(base + s for s in VARIANT_SUFFIXES)
        return frozenset(ids)

    @property
    def response_model(self) -> str:
        # OpenRouter answers with the dated permaslug for this model (spec §3.1); a custom served
        # name is echoed as is, since no permaslug exists for it.
        if self.served_model_name == BASE_MODEL_ID:
            return CANONICAL_SLUG
        return self.served_model_name

    def response_model_for(self, requested: str | None) -> str:
        """The `model` a response names for the id a request chose: the permaslug (or custom name)
        with the request's variant suffix kept, as OpenRouter answers `...-20260403:free` to a
        `...:free` request (spec §3.1)."""
        suffix = next((s for s in VARIANT_SUFFIXES[1:] if requested and requested.endswith(s)), "")
        return self.response_model + suffix


@dataclass
class ServerState:
    """Mutable state of one app instance. `engine` is None while the model is still loading.

    tokenizer: gemmaserve.tokenizer.Tokenizer (encode/decode/token_to_id/generation_defaults/...).
    renderer: gemmaserve.chat.ChatRenderer (the encoder renders with its template).
    prompt_encoder: gemmaserve.chat.PromptEncoder over those two, which keeps control-token
    strings in client text as text; built once with them (`set_chat`, or at construction).
    """

    config: ServerConfig
    engine: EngineClient | None = None
    tokenizer: Any = None
    renderer: Any = None
    prompt_encoder: Any = None
    load_error: str | None = None
    grammar: Any = None  # structured.GrammarCompiler for this tokenizer, built on first use
    generations: GenerationStore = field(default_factory=GenerationStore)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    # Builds (engine, tokenizer, renderer) in a worker thread at startup when the app is created
    # before the model is loaded (the `serve` command); None when they are given ready-made.
    loader: Callable[[], tuple[EngineClient, Any, Any]] | None = None
    load_task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.generations = GenerationStore(self.config.max_stored_generations)
        if self.prompt_encoder is None and self.tokenizer is not None and self.renderer is not None:
            self.set_chat(self.tokenizer, self.renderer)

    def set_chat(self, tokenizer: Any, renderer: Any) -> None:
        """Install the tokenizer and template, and the prompt encoder built from them (it copies
        the tokenizer once, so this is load-time work, not per-request work)."""
        from gemmaserve.chat.prompt import PromptEncoder

        self.tokenizer, self.renderer = tokenizer, renderer
        self.prompt_encoder = PromptEncoder(renderer, tokenizer)

    @property
    def ready(self) -> bool:
        return self.engine is not None and bool(self.engine.is_ready)
