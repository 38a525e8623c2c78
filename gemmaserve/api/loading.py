"""Loading, in one place: a model path becomes what a server serves (engine, tokenizer, chat
template, prompt encoder, grammar compiler), built in a worker thread after the server is up and
installed into ServerState; /health and 503s report progress and failure meanwhile."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

from gemmaserve.api.state import ServerState
from gemmaserve.engine.client import EngineClient

log = logging.getLogger("gemmaserve.api")


@dataclass
class LoadedModel:
    engine: EngineClient
    tokenizer: Any  # gemmaserve.tokenizer.Tokenizer
    renderer: Any  # gemmaserve.chat.ChatRenderer
    prompt_encoder: Any  # gemmaserve.chat.PromptEncoder (copies the tokenizer once: load-time work)
    grammar: Any  # structured.GrammarCompiler, or None when it could not be built


def model_loader(args: argparse.Namespace) -> Callable[[], LoadedModel]:
    """A function that loads the `serve` command's model (run in a worker thread)."""

    def load() -> LoadedModel:
        from gemmaserve.chat.prompt import PromptEncoder
        from gemmaserve.chat.render import ChatRenderer
        from gemmaserve.config import engine_config_from_args
        from gemmaserve.engine.async_engine import AsyncEngine
        from gemmaserve.model.hub import resolve_model_path
        from gemmaserve.structured import GrammarCompiler
        from gemmaserve.tokenizer import Tokenizer

        path = resolve_model_path(args.model)
        # The template is checked before minutes of weight loading, not after.
        template = Tokenizer.from_dir(path).chat_template
        if not template:
            raise ValueError(f"{path} has no chat template (chat_template.jinja or tokenizer_config.json)")
        renderer = ChatRenderer(template)
        cfg = engine_config_from_args(args, model=str(path), seed=args.seed, max_num_seqs=args.max_num_seqs,
                                      max_waiting=args.max_waiting)
        engine = AsyncEngine.from_config(cfg)
        tok = engine.tokenizer
        encoder = PromptEncoder(renderer, tok)
        try:
            # Built now so the first JSON-mode request does not pay for the token trie.
            grammar = GrammarCompiler(tok)
        except Exception:
            log.exception("grammar compiler unavailable; structured outputs will fail per request")
            grammar = None
        return LoadedModel(engine, tok, renderer, encoder, grammar)

    return load


async def load_in_background(state: ServerState) -> None:
    """Run state.loader in a thread and install what it built; a failure is kept in
    state.load_error (reported by /health and as 503s) and the process keeps serving errors."""
    assert state.loader is not None
    try:
        loaded = await asyncio.to_thread(state.loader)
    except Exception as exc:
        log.exception("model loading failed")
        state.load_error = f"{type(exc).__name__}: {exc}"
        return
    install(state, loaded)
    log.info("model loaded; serving")


def install(state: ServerState, loaded: LoadedModel) -> None:
    """Make `state` serve `loaded`; the engine goes in last, since readiness follows it."""
    state.tokenizer, state.renderer = loaded.tokenizer, loaded.renderer
    state.prompt_encoder, state.grammar = loaded.prompt_encoder, loaded.grammar
    state.engine = loaded.engine
