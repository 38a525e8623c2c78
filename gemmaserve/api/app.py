"""FastAPI app factory: routers, auth, body-size limit, error handlers, request metrics, loading."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gemmaserve.api import chat_completions, completions, misc, models
from gemmaserve.api.body_limit import BodySizeLimit
from gemmaserve.api.errors import install_error_handlers
from gemmaserve.api.state import ServerState
from gemmaserve.structured import GrammarCompiler

log = logging.getLogger("gemmaserve.api")

_KNOWN_PATHS = {
    "/api/v1/chat/completions", "/v1/chat/completions", "/api/v1/completions", "/v1/completions",
    "/api/v1/models", "/v1/models", "/api/v1/generation", "/v1/generation", "/health", "/metrics",
}


class RequestMetrics:
    """Counts every response by endpoint and status, errors from middleware included."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _KNOWN_PATHS else "other"
        seen = False

        async def counting_send(message):
            nonlocal seen
            if message["type"] == "http.response.start" and not seen:
                seen = True
                self.state.metrics.observe_request(endpoint, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


async def _load(state: ServerState) -> None:
    assert state.loader is not None
    try:
        engine, tokenizer, renderer = await asyncio.to_thread(state.loader)
    except Exception as exc:  # reported by /health and as 503s; the process keeps serving errors
        log.exception("model loading failed")
        state.load_error = f"{type(exc).__name__}: {exc}"
        return
    try:
        await asyncio.to_thread(state.set_chat, tokenizer, renderer)
    except Exception as exc:
        log.exception("prompt encoder could not be built")
        state.load_error = f"{type(exc).__name__}: {exc}"
        return
    try:
        # Built now so the first JSON-mode request does not pay for the token trie.
        state.grammar = await asyncio.to_thread(GrammarCompiler, tokenizer)
    except Exception:
        log.exception("grammar compiler unavailable; structured outputs will fail per request")
    state.engine = engine
    log.info("model loaded; serving")


def create_app(state: ServerState) -> FastAPI:
    """An app serving `state`. With `state.loader` set the model loads in the background after
    startup (requests get 503 until then) and the engine is shut down with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.loader is not None and state.engine is None:
            state.load_task = asyncio.create_task(_load(state))
        try:
            yield
        finally:
            if state.load_task is not None and not state.load_task.done():
                state.load_task.cancel()
            if state.loader is not None and state.engine is not None:
                await state.engine.shutdown()

    app = FastAPI(title="gemmaserve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gs = state
    install_error_handlers(app)
    for module in (chat_completions, completions, models, misc):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimit, max_bytes=state.config.max_body_bytes)
    app.add_middleware(RequestMetrics, state=state)
    return app
