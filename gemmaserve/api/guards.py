"""What every generation endpoint runs first (model name, provider, engine up) and how it starts
answering (a whole body, or a stream whose first output decides the status)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from gemmaserve.api.errors import APIError, engine_error_to_api
from gemmaserve.api.run import EngineRun, unless_disconnected
from gemmaserve.api.sse import SSEResponse
from gemmaserve.api.state import ServerState
from gemmaserve.protocol.common import SamplingFields
from gemmaserve.types import EngineError


def check_model(state: ServerState, req: SamplingFields) -> str | None:
    """The model id the request chose, or None for an omitted `model` (OpenRouter then uses the
    account default: ours is the only one). With a `models` fallback list the first entry we serve
    wins (spec §2.6). 404 when none is ours."""
    accepted = state.config.accepted_model_ids
    if req.models:
        chosen = next((m for m in req.models if m in accepted), None)
        if chosen is not None:
            return chosen
        raise APIError(404, f"None of the requested models is served here: {', '.join(req.models)}",
                       "not_found", {"param": "models"})
    if req.model is None or req.model in accepted:
        return req.model
    raise APIError(404, f"{req.model} is not a valid model ID", "not_found", {"param": "model"})


def check_provider(state: ServerState, req: SamplingFields) -> None:
    """Provider preferences that would filter out our only endpoint give OpenRouter's 404 (spec
    §2.7); preferences that only order or rank providers change nothing here."""
    prefs = req.provider
    if not isinstance(prefs, dict):
        if prefs is not None:
            raise APIError(400, "Invalid value for 'provider': expected an object", "invalid_request",
                           {"param": "provider"})
        return
    cfg = state.config
    ours = cfg.provider_name.lower()
    quant = (cfg.quantization or "bf16").lower()
    reason = None
    only = prefs.get("only")
    if isinstance(only, list) and only and ours not in {str(p).lower().split("/")[0] for p in only}:
        reason = "provider.only"
    ignore = prefs.get("ignore")
    if isinstance(ignore, list) and ours in {str(p).lower().split("/")[0] for p in ignore}:
        reason = "provider.ignore"
    order = prefs.get("order")
    if (prefs.get("allow_fallbacks") is False and isinstance(order, list) and order
            and ours not in {str(p).lower().split("/")[0] for p in order}):
        reason = "provider.order"
    quants = prefs.get("quantizations")
    if isinstance(quants, list) and quants and quant not in {str(q).lower() for q in quants}:
        reason = "provider.quantizations"
    max_price = prefs.get("max_price")
    if isinstance(max_price, dict):
        for key, ours_price in (("prompt", cfg.prompt_price_per_m), ("completion", cfg.completion_price_per_m)):
            try:
                if key in max_price and float(max_price[key]) < ours_price:
                    reason = f"provider.max_price.{key}"
            except (TypeError, ValueError):
                raise APIError(400, f"Invalid value for 'provider.max_price.{key}': expected a number",
                               "invalid_request", {"param": f"provider.max_price.{key}"}) from None
    if reason is not None:
        raise APIError(404, f"No endpoints found that match your provider preferences ({reason}).", "not_found",
                       {"param": reason})


def admit(request: Request, req: SamplingFields) -> tuple[ServerState, str]:
    """The app's state and the `model` its responses name (the request's variant kept), once the
    model, provider preferences and engine readiness all pass."""
    state: ServerState = request.app.state.gs
    model = state.config.response_model_for(check_model(state, req))
    check_provider(state, req)
    ensure_ready(state)
    return state, model


def ensure_ready(state: ServerState) -> None:
    if state.load_error is not None:
        raise APIError(503, f"The model failed to load: {state.load_error}", "provider_unavailable")
    if state.engine is None:
        raise APIError(503, "The model is still loading; retry shortly.", "provider_overloaded",
                       headers={"Retry-After": "5"})
    if not state.engine.is_ready:
        raise APIError(503, "The inference engine is not ready.", "provider_unavailable",
                       headers={"Retry-After": "5"})


# A stream's status line waits at most this long for the engine's first answer: long enough for
# errors raised at submission (queue full, prompt too long) to get their own status, short enough
# that a queued client soon sees headers and `: OPENROUTER PROCESSING` comments.
FIRST_WAIT_S = 1.0


async def respond(
    request: Request,
    run: EngineRun,
    *,
    stream: bool,
    whole: Callable[[], Awaitable[Response]],
    frames: Callable[[Any], AsyncIterator[bytes]],
    keepalive_s: float,
    gen_id: str,
) -> Response:
    """Answer with `whole()` (cancelled if the client leaves), or with an SSE stream of
    `frames(first)`, where `first` is the first output, or TIMEOUT after `keepalive_s` or
    FIRST_WAIT_S, whichever is shorter (the stream then starts with a keep-alive comment). The run
    is closed (its request aborted unless finished) on every path that does not hand it to the stream."""
    if not stream:
        try:
            return await unless_disconnected(request, whole())
        finally:
            await run.close()
    try:
        # Errors the engine raises up front (queue full, prompt too long) still get their status:
        # nothing has been sent yet. Past the first keep-alive they go in-band.
        first = await run.next(timeout=min(keepalive_s, FIRST_WAIT_S))
    except EngineError as exc:
        await run.close()
        raise engine_error_to_api(exc) from None
    except BaseException:
        await run.close()
        raise
    return SSEResponse(frames(first), headers={"X-Generation-Id": gen_id})


async def run_to_end(run: EngineRun) -> None:
    """Consume outputs until the request finishes (run.last then holds the final one)."""
    out = await run.next()
    while out is not None and not out.finished:
        out = await run.next()
