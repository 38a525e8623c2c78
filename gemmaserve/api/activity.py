"""GET /api/v1/activity (the last 30 completed UTC days by date x model x endpoint) and
GET /api/v1/generation/content (stored prompt and output, where the operator keeps content)."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Depends, Request

from gemmaserve.api.callers import Caller, require_inference_key, require_management_key
from gemmaserve.api.errors import APIError
from gemmaserve.store import queries, utcnow

router = APIRouter()

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def _store(request: Request):
    store = getattr(request.app.state.gs, "store", None)
    if store is None:
        raise APIError(404, "This server keeps no store (started with --no-store).", "not_found")
    return store


@router.get("/api/v1/activity")
async def activity(request: Request, date: str | None = None, api_key_hash: str | None = None,
                   _: Caller = Depends(require_management_key)):
    if date is not None and not _DATE.match(date):
        raise APIError(400, "date must be YYYY-MM-DD", "invalid_request", {"param": "date"})
    if api_key_hash is not None and not _HASH.match(api_key_hash.lower()):
        raise APIError(400, "api_key_hash must be a sha256 hex digest", "invalid_request", {"param": "api_key_hash"})
    store = _store(request)
    cfg = request.app.state.gs.config
    rows = await asyncio.to_thread(store.read, queries.activity, utcnow(), date,
                                   api_key_hash.lower() if api_key_hash else None)
    return {"data": [{
        "date": r["date"], "model": cfg.served_model_name, "model_permaslug": r["model"],
        "endpoint_id": f"{cfg.provider_name}/{r['api_type']}", "provider_name": cfg.provider_name,
        "api_type": r["api_type"], "requests": r["requests"], "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"], "reasoning_tokens": r["reasoning_tokens"], "usage": r["usage"],
        "byok_usage_inference": 0, "byok_requests": 0,
    } for r in rows]}


@router.get("/api/v1/generation/content")
async def generation_content(request: Request, id: str | None = None, caller: Caller = Depends(require_inference_key)):
    if not id:
        raise APIError(400, "Missing required query parameter 'id'", "invalid_request", {"param": "id"})
    store = _store(request)
    if not store.options.store_content:
        raise APIError(404, "This server does not store generation content (serve --store-content).", "not_found")
    rec = await asyncio.to_thread(store.generation, id)
    if rec is None or (caller.key_hash is not None and rec.api_key_hash != caller.key_hash):
        raise APIError(404, f"Generation {id} not found", "not_found")
    content = await asyncio.to_thread(store.read, queries.content, id)
    if content is None:
        raise APIError(404, f"Generation {id} has no stored content", "not_found")
    return {"data": content}
