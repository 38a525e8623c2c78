"""The cluster's OpenRouter-compatible front door: auth, routing, forwarding to the chosen
endpoint, /generation for what it served, and the live endpoint listing (uptime, latency,
throughput, outages) OpenRouter's model page shows."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Awaitable, Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gemmaserve.api.admission import check_bearer
from gemmaserve.api.limits import BodySizeLimit
from gemmaserve.api.errors import APIError, install_error_handlers
from gemmaserve.api.generation import unless_disconnected
from gemmaserve.api.sse import SSEResponse
from gemmaserve.api.usage import GenerationStore
from gemmaserve.cluster.endpoints import Endpoint
from gemmaserve.cluster.forwarding import Forwarder
from gemmaserve.cluster.route_request import PARAMETERS, route_request
from gemmaserve.cluster.routing import Router, RoutingError
from gemmaserve.cluster.stats import StatsBook
from gemmaserve.cluster.transport import Transport

log = logging.getLogger("gemmaserve.cluster")

GENERATE_PATHS = ("/api/v1/chat/completions", "/v1/chat/completions", "/api/v1/completions", "/v1/completions")


@dataclass(frozen=True)
class IngressConfig:
    default_model: str  # what a request without `model` gets
    api_key_hashes: frozenset[str] = frozenset()  # empty: open (like `serve` without keys)
    max_body_bytes: int = 8 * 1024 * 1024
    probe_interval_s: float = 1.0  # how often each replica's health is asked
    probe_timeout_s: float = 3.0  # a probe unanswered this long marks the endpoint down
    cooldown_s: float = 30.0  # a failed endpoint goes to the back of the line this long
    sticky_ttl_s: float = 600.0  # a session stays on its endpoint this long unused; 0 = no stickiness
    max_stored_generations: int = 10_000


class Ingress:
    """The routing state behind the app. `probes` maps a replica's tag to a coroutine factory
    that raises when the replica is not healthy; `count_tokens` sizes prompts for the context filter."""

    def __init__(self, config: IngressConfig, endpoints: list[Endpoint], transports: Mapping[str, Transport],
                 probes: Mapping[str, Callable[[], Awaitable[Any]]] | None = None,
                 count_tokens: Callable[[str], int] | None = None):
        self.config = config
        self.endpoints = endpoints
        self.stats = StatsBook()
        self.router = Router(endpoints, self.stats, cooldown_s=config.cooldown_s, sticky_ttl_s=config.sticky_ttl_s)
        self.generations = GenerationStore(config.max_stored_generations)
        self.forwarder = Forwarder(self.router, self.stats, transports, self._store)
        self.transports = transports
        self.probes = dict(probes or {})
        self.count_tokens = count_tokens

    def _store(self, record: dict[str, Any]) -> None:
        self.generations.put(record["id"], record)

    async def probe_once(self) -> None:
        async def one(tag: str, probe: Callable[[], Awaitable[Any]]) -> None:
            try:
                await asyncio.wait_for(probe(), self.config.probe_timeout_s)
                ok = True
            except Exception:
                ok = False
            self.stats[tag].set_health(ok, time.monotonic(), time.time())

        await asyncio.gather(*(one(t, p) for t, p in self.probes.items()))

    async def probe_loop(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.config.probe_interval_s)


def _per_token(price_per_m: float) -> str:
    text = format((Decimal(str(price_per_m)) / Decimal(1_000_000)).normalize(), "f")
    return "0" if Decimal(text) == 0 else text


def endpoint_row(ing: Ingress, ep: Endpoint, model: str, now: float) -> dict[str, Any]:
    """One PublicEndpoint (spec api §7.3) with its live stats, plus in_flight and outages."""
    live = ing.stats[ep.tag].report(now)
    params = sorted(ep.supported_parameters) if ep.supported_parameters is not None else sorted(PARAMETERS)
    return {
        "name": f"{ep.tag} | {model}", "model_id": model, "model_name": model, "context_length": ep.context_length,
        "pricing": {"prompt": _per_token(ep.prompt_price_per_m), "completion": _per_token(ep.completion_price_per_m),
                    "request": "0", "image": "0"},
        "provider_name": ep.tag, "tag": ep.tag, "quantization": ep.quantization,
        "max_completion_tokens": None, "max_prompt_tokens": ep.context_length, "supported_parameters": params,
        "supports_implicit_caching": ep.is_replica, "kind": "replica" if ep.is_replica else "upstream", **live,
    }


def create_ingress_app(ing: Ingress) -> FastAPI:
    cfg = ing.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(ing.probe_loop()) if ing.probes else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    app = FastAPI(title="gemmaserve cluster", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)

    def auth(request: Request) -> None:
        check_bearer(request.headers.get("authorization"), cfg.api_key_hashes)

    async def generate(request: Request):
        auth(request)
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise APIError(400, "Invalid JSON in request body", "invalid_request") from None
        if not isinstance(body, dict):
            raise APIError(400, "Invalid request body: expected a JSON object", "invalid_request")
        stream = body.get("stream") is True

        async def answer() -> Response:
            try:
                route = route_request(body, request.headers, cfg.default_model, ing.count_tokens)
                status, headers, content = await ing.forwarder.run(route, "POST", request.url.path, request.headers,
                                                                   body, stream)
            except RoutingError as exc:  # raised before anything was sent
                raise APIError(exc.status, exc.message, metadata={"param": exc.param} if exc.param else None) from None
            if isinstance(content, bytes):
                return Response(content, status_code=status, headers=headers, media_type="application/json")
            return SSEResponse(content, headers=headers)

        if stream:
            return await answer()
        return await unless_disconnected(request, answer())

    for path in GENERATE_PATHS:
        app.add_api_route(path, generate, methods=["POST"])

    @app.get("/api/v1/generation")
    @app.get("/v1/generation")
    async def generation(request: Request, id: str | None = None):
        auth(request)
        if not id:
            raise APIError(400, "Missing required query parameter 'id'", "invalid_request", {"param": "id"})
        record = ing.generations.get(id)
        if record is None:
            raise APIError(404, f"Generation {id} not found", "not_found")
        return {"data": record}

    def models_served() -> list[str]:
        return list(dict.fromkeys(m for ep in ing.endpoints for m in sorted(ep.models)))

    @app.get("/api/v1/endpoints")
    async def all_endpoints():
        now = time.monotonic()
        return {"data": [endpoint_row(ing, ep, cfg.default_model if cfg.default_model in ep.models else
                                      sorted(ep.models)[0], now) for ep in ing.endpoints]}

    @app.get("/api/v1/models/{author}/{slug}/endpoints")
    async def model_endpoints(author: str, slug: str):
        model = f"{author}/{slug}"
        serving = [ep for ep in ing.endpoints if model in ep.models]
        if not serving:
            raise APIError(404, f"Model {model} not found", "not_found")
        now = time.monotonic()
        return {"data": {"id": model, "name": model, "endpoints": [endpoint_row(ing, ep, model, now) for ep in serving]}}

    @app.get("/api/v1/models")
    @app.get("/v1/models")
    async def models():
        ctx = {m: max(ep.context_length for ep in ing.endpoints if m in ep.models) for m in models_served()}
        data = [{"id": m, "name": m, "context_length": ctx[m], "links": {"details": f"/api/v1/models/{m}/endpoints"}}
                for m in models_served()]
        return {"data": data, "total_count": len(data), "links": {"next": None}}

    @app.get("/health")
    async def health():
        now = time.monotonic()
        up = [ep.tag for ep in ing.endpoints if not ing.stats[ep.tag].recently_failed(now, 0.0)]
        if up:
            return {"status": "ok", "endpoints_up": up}
        return JSONResponse({"status": "unavailable", "endpoints_up": []}, status_code=503)

    return app
