"""What a key holder asks about their account: GET /generation (a stored record). The key's own
object (/key), credits and activity live in key_admin.py and activity.py."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from gemmaserve.api.callers import Caller, caller_of
from gemmaserve.api.errors import APIError
from gemmaserve.api.state import ServerState
from gemmaserve.api.usage import generation_object

router = APIRouter()


@router.get("/api/v1/generation")
@router.get("/v1/generation", include_in_schema=False)
async def generation(request: Request, id: str | None = None, caller: Caller = Depends(caller_of)):
    """From the store when the server keeps one (so it survives restarts); a key sees its own
    generations, a management key all of them."""
    state: ServerState = request.app.state.gs
    if not id:
        raise APIError(400, "Missing required query parameter 'id'", "invalid_request", {"param": "id"})
    if state.store is None:
        record = state.generations.get(id)
    else:
        rec = await asyncio.to_thread(state.store.generation, id)
        visible = rec is not None and (caller.management or caller.key_hash is None
                                       or rec.api_key_hash == caller.key_hash)
        record = generation_object(rec) if visible else None
    if record is None:
        raise APIError(404, f"Generation {id} not found", "not_found")
    return {"data": record}
