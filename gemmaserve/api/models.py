"""GET /models, /models/{author}/{slug}/endpoints and /model/{author}/{slug} (spec §7)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request

from gemmaserve.api.errors import APIError
from gemmaserve.api.state import ServerState
from gemmaserve.config import BASE_MODEL_ID, CANONICAL_SLUG
from gemmaserve.store import queries, utcnow

router = APIRouter()

# The model record's date and text (spec §7.2); created is the 2026-04-03 release day.
_CREATED = 1775174400
_DESCRIPTION = (
    "Instruction-tuned Mixture-of-Experts model from Google DeepMind (about 25B total / 4B active "
    "parameters) with text, image and video input, a 256K-token context window, function calling, "
    "optional thinking mode and structured output. Apache 2.0."
)
SUPPORTED_PARAMETERS = [
    "frequency_penalty", "include_reasoning", "logit_bias", "logprobs", "max_completion_tokens", "max_tokens",
    "min_p", "parallel_tool_calls", "presence_penalty", "reasoning", "reasoning_effort", "repetition_penalty",
    "response_format", "seed", "stop", "structured_outputs", "temperature", "tool_choice", "tools", "top_k",
    "top_a", "top_logprobs", "top_p",
]


SPOKEN_APIS = {
    "chat_completions": "/api/v1/chat/completions",
    "completions": "/api/v1/completions",
    "responses": "/api/v1/responses",
    "messages": "/api/v1/messages",
    "messages_count_tokens": "/api/v1/messages/count_tokens",
    "batches": "/api/beta/batches",
    "response_cache": "X-OpenRouter-Cache",
}


def _per_token(price_per_m: float) -> str:
    # Strings, USD per token, without exponent notation: "0.00000006" (spec §7.1).
    value = Decimal(str(price_per_m)) / Decimal(1_000_000)
    text = format(value.normalize(), "f")
    return text if text != "0E-6" else "0"


def _pricing(state: ServerState) -> dict[str, str]:
    cfg = state.config
    return {"prompt": _per_token(cfg.prompt_price_per_m), "completion": _per_token(cfg.completion_price_per_m),
            "request": "0", "image": "0", "web_search": "0", "internal_reasoning": "0"}


def _context_length(state: ServerState) -> int:
    # The real context is 262,144; a server started with a smaller --max-model-len advertises that.
    return state.engine.max_model_len if state.engine is not None else 262_144


def _architecture(state: ServerState) -> dict[str, Any]:
    # OpenRouter lists text+image+video input for this model; a checkpoint without a vision tower
    # answers image/video parts with a 400, so it advertises text only (clients filter on this).
    if getattr(state.engine, "takes_media", False):
        return {"modality": "text+image+video->text", "input_modalities": ["text", "image", "video"],
                "output_modalities": ["text"], "tokenizer": "Gemma", "instruct_type": None}
    return {"modality": "text->text", "input_modalities": ["text"],
            "output_modalities": ["text"], "tokenizer": "Gemma", "instruct_type": None}


def _defaults(state: ServerState) -> dict[str, Any] | None:
    defaults = getattr(state.tokenizer, "generation_defaults", None) or {}
    picked = {k: defaults[k] for k in ("temperature", "top_p", "top_k") if k in defaults}
    return picked or None


def model_object(state: ServerState) -> dict[str, Any]:
    cfg = state.config
    model_id = cfg.served_model_name
    ctx = _context_length(state)
    max_completion = min(cfg.max_completion_tokens, ctx) if cfg.max_completion_tokens else None
    return {
        "id": model_id,
        "canonical_slug": CANONICAL_SLUG if model_id == BASE_MODEL_ID else model_id,
        "hugging_face_id": "google/gemma-4-26B-A4B-it",
        "name": "Google: Gemma 4 26B A4B",
        "created": _CREATED,
        "description": _DESCRIPTION,
        "context_length": ctx,
        "architecture": _architecture(state),
        "pricing": _pricing(state),
        "top_provider": {"context_length": ctx, "max_completion_tokens": max_completion, "is_moderated": False},
        "per_request_limits": None,
        "supported_parameters": SUPPORTED_PARAMETERS,
        "default_parameters": _defaults(state),
        "reasoning": {"supported_efforts": None, "default_enabled": False, "mandatory": False,
                      "supports_max_tokens": True},
        "expiration_date": None,
        "knowledge_cutoff": None,
        "links": {"details": f"/api/v1/models/{model_id}/endpoints"},
        "supported_voices": None,
        # Not in OpenRouter's schema (clients ignore unknown keys): the wire protocols this server
        # speaks for the model, so a client can pick one without probing.
        "apis": SPOKEN_APIS,
    }


def _csv(value: str | None) -> set[str]:
    return {v.strip() for v in (value or "").split(",") if v.strip()}


def _matches(m: dict[str, Any], supported_parameters: str | None, output_modalities: str | None,
             input_modalities: str | None) -> bool:
    """OpenRouter's list filters that can exclude our one model (spec §7.1); output defaults to text."""
    if not _csv(supported_parameters) <= set(m["supported_parameters"]):
        return False
    outs = _csv(output_modalities) or {"text"}
    if "all" not in outs and not outs & set(m["architecture"]["output_modalities"]):
        return False
    ins = _csv(input_modalities)
    return not ins or bool(ins & set(m["architecture"]["input_modalities"]))


@router.get("/api/v1/models")
@router.get("/v1/models", include_in_schema=False)
async def list_models(request: Request, supported_parameters: str | None = None,
                      output_modalities: str | None = None, input_modalities: str | None = None):
    state: ServerState = request.app.state.gs
    m = model_object(state)
    data = [m] if _matches(m, supported_parameters, output_modalities, input_modalities) else []
    return {"data": data, "total_count": len(data), "links": {"next": None}}


def _lookup(state: ServerState, author: str, slug: str) -> None:
    if f"{author}/{slug}" not in state.config.accepted_model_ids:
        raise APIError(404, f"Model {author}/{slug} not found", "not_found")


@router.get("/api/v1/model/{author}/{slug}")
async def get_model(author: str, slug: str, request: Request):
    state: ServerState = request.app.state.gs
    _lookup(state, author, slug)
    return {"data": model_object(state)}


@router.get("/api/v1/models/{author}/{slug}/endpoints")
async def model_endpoints(author: str, slug: str, request: Request):
    state: ServerState = request.app.state.gs
    _lookup(state, author, slug)
    m = model_object(state)
    cfg = state.config
    live = {"uptime_last_5m": None, "uptime_last_30m": None, "uptime_last_1d": None,
            "latency_last_30m": None, "throughput_last_30m": None}
    if state.store is not None:
        # From the store's request outcomes, so the numbers survive a restart (platform spec §5).
        live = await asyncio.to_thread(state.store.read, queries.endpoint_stats, utcnow(),
                                       state.store.options.min_uptime_samples)
    endpoint = {
        "name": f"{cfg.provider_name} | {m['id']}",
        "model_id": m["canonical_slug"],
        "model_name": m["name"],
        "context_length": m["context_length"],
        "pricing": m["pricing"],
        "provider_name": cfg.provider_name,
        "tag": cfg.provider_name,
        "quantization": cfg.quantization or "bf16",
        "max_completion_tokens": m["top_provider"]["max_completion_tokens"],
        "max_prompt_tokens": m["context_length"],
        "supported_parameters": m["supported_parameters"],
        "status": 0 if state.ready else -1,
        "uptime_last_5m": live["uptime_last_5m"],
        "uptime_last_30m": live["uptime_last_30m"],
        "uptime_last_1d": live["uptime_last_1d"],
        "supports_implicit_caching": True,  # prefix caching reuses shared prompt prefixes
        "latency_last_30m": live["latency_last_30m"],
        "throughput_last_30m": live["throughput_last_30m"],
    }
    return {"data": {"id": m["id"], "name": m["name"], "created": m["created"], "description": m["description"],
                     "architecture": m["architecture"], "endpoints": [endpoint]}}
