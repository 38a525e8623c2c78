"""Checks every generation endpoint runs first: the model name, and whether the engine is up."""

from __future__ import annotations

from gemmaserve.api.errors import APIError
from gemmaserve.api.state import ServerState
from gemmaserve.protocol.common import SamplingFields


def check_model(state: ServerState, req: SamplingFields) -> None:
    """`model` may be omitted (OpenRouter then uses the account default: ours is the only one).
    With a `models` fallback list the first entry we serve wins (spec §2.6)."""
    accepted = state.config.accepted_model_ids
    if req.models:
        if any(m in accepted for m in req.models):
            return
        raise APIError(404, f"None of the requested models is served here: {', '.join(req.models)}",
                       "not_found", {"param": "models"})
    if req.model is None or req.model in accepted:
        return
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


def ensure_ready(state: ServerState) -> None:
    if state.load_error is not None:
        raise APIError(503, f"The model failed to load: {state.load_error}", "provider_unavailable")
    if state.engine is None:
        raise APIError(503, "The model is still loading; retry shortly.", "provider_overloaded",
                       headers={"Retry-After": "5"})
    if not state.engine.is_ready:
        raise APIError(503, "The inference engine is not ready.", "provider_unavailable",
                       headers={"Retry-After": "5"})
