"""The per-app state every endpoint reads: settings, engine, tokenizer, prompt encoder, grammar
compiler, ledger and metrics. `engine` is None while the model is still loading."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from gemmaserve.api.accounting import Ledger, MemoryLedger
from gemmaserve.api.metrics import ServerMetrics
from gemmaserve.api.response_cache import ResponseCache
from gemmaserve.api.store_ledger import StoreLedger
from gemmaserve.api.preparation import PreparationPool
from gemmaserve.api.usage import GenerationStore
from gemmaserve.config import ServerConfig
from gemmaserve.engine.client import EngineClient
from gemmaserve.store import Store

if TYPE_CHECKING:
    from gemmaserve.api.loading import LoadedModel


@dataclass
class ServerState:
    """Mutable state of one app instance.

    tokenizer: gemmaserve.tokenizer.Tokenizer; renderer: gemmaserve.chat.ChatRenderer;
    prompt_encoder: gemmaserve.chat.PromptEncoder over those two (built once, by loading.install);
    grammar: structured.GrammarCompiler for this tokenizer (built at load or on first use).
    """

    config: ServerConfig
    engine: EngineClient | None = None
    tokenizer: Any = None
    renderer: Any = None
    prompt_encoder: Any = None
    load_error: str | None = None
    grammar: Any = None
    generations: GenerationStore = field(default_factory=GenerationStore)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    response_cache: ResponseCache = field(default_factory=ResponseCache)
    # Where batches are saved (api/batches.BatchRepository); None keeps them in memory only.
    batch_repo: Any = None
    # Where generations are recorded and charged (accounting.py); a durable store replaces it.
    ledger: Ledger | None = None
    # Durable keys, generations and stats (gemmaserve.store); None = in memory only (--no-store).
    store: Store | None = None
    # Builds the LoadedModel in a worker thread at startup when the app is created before the
    # model is loaded (the `serve` command); None when engine and tokenizer are given ready-made.
    loader: "Callable[[], LoadedModel] | None" = None
    load_task: asyncio.Task | None = None
    preparation: PreparationPool | None = None  # built from config in __post_init__

    def __post_init__(self) -> None:
        self.generations = GenerationStore(self.config.max_stored_generations)
        self.response_cache = ResponseCache(self.config.response_cache_entries, self.config.response_cache_bytes)
        if self.ledger is None and self.store is not None:
            self.ledger = StoreLedger(self.config, self.store, self.metrics)
        if self.preparation is None:
            c = self.config
            self.preparation = PreparationPool(c.prep_workers, c.prep_queue, c.prep_time_limit_s)
        if self.ledger is None:
            self.ledger = MemoryLedger(self.config, self.generations, self.metrics)
        if self.prompt_encoder is None and self.tokenizer is not None and self.renderer is not None:
            from gemmaserve.chat.prompt import PromptEncoder

            self.prompt_encoder = PromptEncoder(self.renderer, self.tokenizer)

    @property
    def ready(self) -> bool:
        return self.engine is not None and bool(self.engine.is_ready)
