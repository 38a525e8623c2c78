"""FastAPI app factory: routers, auth, body-size limit, error handlers, request metrics, loading."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gemmaserve.api import (account, activity, batches, chat_completions, completions, health, key_admin,
                            messages, model_page, models, responses)
from gemmaserve.api.limits import BodySizeLimit, ConcurrencyLimit
from gemmaserve.api.errors import install_error_handlers
from gemmaserve.api.loading import load_in_background
from gemmaserve.api.outcomes import OutcomeRecorder
from gemmaserve.api.openapi import install_openapi
from gemmaserve.api.state import ServerState

_KNOWN_PATHS = {
    "/api/v1/chat/completions", "/v1/chat/completions", "/api/v1/completions", "/v1/completions",
    "/api/v1/responses", "/v1/responses", "/api/v1/messages", "/v1/messages", "/api/v1/messages/count_tokens",
    "/v1/messages/count_tokens", "/api/v1/models", "/v1/models", "/api/v1/generation", "/v1/generation", "/health", "/metrics",
    "/api/v1/keys", "/api/v1/key", "/api/v1/credits", "/api/v1/activity", "/api/frontend/stats", "/",
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gemmaserve")
    except PackageNotFoundError:
        return "0"


def create_app(state: ServerState) -> FastAPI:
    """An app serving `state`. With `state.loader` set the model loads in the background after
    startup (requests get 503 until then) and the engine is shut down with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.loader is not None and state.engine is None:
            state.load_task = asyncio.create_task(load_in_background(state))
        app.state.batches.resume()
        try:
            yield
        finally:
            await app.state.batches.shutdown()
            if state.load_task is not None and not state.load_task.done():
                state.load_task.cancel()
            if state.loader is not None and state.engine is not None:
                await state.engine.shutdown()
            if state.loader is not None:
                state.preparation.shutdown()

    app = FastAPI(title="gemmaserve", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.gs = state
    install_error_handlers(app)
    install_openapi(app)
    # Static files first and model_page last: its /{author}/{slug} page route must shadow no path.
    model_page.mount_static(app)
    for module in (chat_completions, completions, responses, batches, models, account, key_admin, activity, health):
        app.include_router(module.router)
    app.state.batches = batches.BatchRunner(app, state, batches.repository(state))
    messages.register(app)
    app.include_router(model_page.router)
    cfg = state.config
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes, timeout_s=cfg.body_timeout_s)
    app.add_middleware(OutcomeRecorder, state=state)  # a no-op without a store
    app.add_middleware(ConcurrencyLimit, limit=cfg.max_concurrent_requests)
    app.add_middleware(RequestMetrics, state=state)
    return app
