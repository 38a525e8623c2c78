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


def ensure_ready(state: ServerState) -> None:
    if state.load_error is not None:
        raise APIError(503, f"The model failed to load: {state.load_error}", "provider_unavailable")
    if state.engine is None:
        raise APIError(503, "The model is still loading; retry shortly.", "provider_overloaded",
                       headers={"Retry-After": "5"})
    if not state.engine.is_ready:
        raise APIError(503, "The inference engine is not ready.", "provider_unavailable",
                       headers={"Retry-After": "5"})
