"""Admission: what a request passes before any work is done for it, in order: auth (the route
dependency `require_auth`), the model it names, provider preferences, engine readiness. `admit`
returns the `Admission` every later step reads (state, response model, key, headers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from fastapi import Request

from gemmaserve.api.callers import require_inference_key
from gemmaserve.api.errors import APIError
from gemmaserve.api.keys import matching_digest
from gemmaserve.api.state import ServerState
from gemmaserve.protocol.common import SamplingFields


@dataclass(frozen=True)
class Admission:
    """A request that passed admission. `key_hash` is the accepted key's digest (None on an open
    server): the handle a key-limit store reserves against."""

    state: ServerState
    model: str  # the `model` responses name (the request's variant suffix kept)
    key_hash: str | None
    headers: Mapping[str, str]


def check_bearer(authorization: str | None, accepted: frozenset[str]) -> str | None:
    """The accepted digest of the header's key (None on an open server); otherwise raise the
    OpenRouter 401 bodies (spec §1.3). Static keys only: the cluster ingress checks with it; the
    app itself resolves every kind of key (static, stored, management) through callers.py."""
    if not accepted:
        return None
    if not authorization:
        raise APIError(401, "No auth credentials found", "authentication")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise APIError(401, "No auth credentials found", "authentication")
    digest = matching_digest(key, accepted)
    if digest is None:
        raise APIError(401, "User not found.", "authentication")
    return digest


# ASGI scope key of a batch item run in-process (api/batches.py); no HTTP request can set it.
BATCH_SCOPE = "gemmaserve.batch"


@dataclass(frozen=True)
class BatchMark:
    """What a batch item carries instead of credentials: the batch owner's key digest (checked when
    the batch was created), its scheduling priority and the price factor it is billed at."""

    key_hash: str | None
    priority: int
    price_factor: float


async def require_auth(request: Request) -> None:
    """FastAPI dependency of the generation endpoints: a valid key that may call inference
    (callers.py: static, stored or none on an open server; never a management key). Leaves the
    key's digest on request.state.key_hash for admit(). A batch item carries its owner's digest,
    checked when the batch was made."""
    mark: BatchMark | None = request.scope.get(BATCH_SCOPE)
    if mark is not None:
        request.state.key_hash = mark.key_hash
        return
    caller = await require_inference_key(request)
    request.state.key_hash = caller.key_hash


def check_model(state: ServerState, req: SamplingFields) -> str | None:
    """The model id the request chose, or None for an omitted `model` (OpenRouter then uses the
    account default: ours is the only one). With a `models` fallback list the first entry we serve
    wins (spec §2.6). 404 when none is ours."""
    accepted = state.config.accepted_model_ids
    if req.models:
        chosen = next((m for m in req.models if m in accepted), None)
        if chosen is not None:
            return chosen
        shown = ", ".join(_shown(m) for m in req.models[:_MODELS_SHOWN])
        more = len(req.models) - _MODELS_SHOWN
        raise APIError(404, f"None of the requested models is served here: {shown}"
                       + (f" (and {more} more)" if more > 0 else ""), "not_found", {"param": "models"})
    if req.model is None or req.model in accepted:
        return req.model
    raise APIError(404, f"{_shown(req.model)} is not a valid model ID", "not_found", {"param": "model"})


# A 404 names the ids it refused, but a client's list of 100,000 ids is not echoed back whole.
_MODELS_SHOWN = 5
_ID_CHARS_SHOWN = 200


def _shown(model_id: str) -> str:
    return model_id if len(model_id) <= _ID_CHARS_SHOWN else model_id[:_ID_CHARS_SHOWN] + "..."


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


def admit(request: Request, req: SamplingFields) -> Admission:
    """The Admission of a request whose model, provider preferences and engine readiness all pass
    (auth already ran as the route's dependency)."""
    state: ServerState = request.app.state.gs
    model = state.config.response_model_for(check_model(state, req))
    check_provider(state, req)
    ensure_ready(state)
    return Admission(state, model, getattr(request.state, "key_hash", None), request.headers)


def ensure_ready(state: ServerState) -> None:
    if state.load_error is not None:
        raise APIError(503, f"The model failed to load: {state.load_error}", "provider_unavailable")
    if state.engine is None:
        raise APIError(503, "The model is still loading; retry shortly.", "provider_overloaded",
                       headers={"Retry-After": "5"})
    if not state.engine.is_ready:
        raise APIError(503, "The inference engine is not ready.", "provider_unavailable",
                       headers={"Retry-After": "5"})
