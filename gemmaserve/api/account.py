"""What a key holder asks about their account: GET /generation (a stored record) and /key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from gemmaserve.api.admission import require_auth
from gemmaserve.api.errors import APIError
from gemmaserve.api.state import ServerState

router = APIRouter()


@router.get("/api/v1/generation", dependencies=[Depends(require_auth)])
@router.get("/v1/generation", dependencies=[Depends(require_auth)])
async def generation(request: Request, id: str | None = None):
    state: ServerState = request.app.state.gs
    if not id:
        raise APIError(400, "Missing required query parameter 'id'", "invalid_request", {"param": "id"})
    record = state.generations.get(id)
    if record is None:
        raise APIError(404, f"Generation {id} not found", "not_found")
    return {"data": record}


@router.get("/api/v1/key", dependencies=[Depends(require_auth)])
@router.get("/api/v1/auth/key", dependencies=[Depends(require_auth)])
async def key_info(request: Request):
    """Key info (spec §8.2): a self-hosted key has no credit limit, so limits are null."""
    _, _, key = (request.headers.get("authorization") or "").partition(" ")
    key = key.strip()
    label = f"{key[:8]}...{key[-3:]}" if len(key) > 14 else ("open" if not key else "***")
    return {"data": {
        "label": label, "limit": None, "limit_remaining": None, "limit_reset": None, "include_byok_in_limit": False,
        "usage": 0, "usage_daily": 0, "usage_weekly": 0, "usage_monthly": 0,
        "byok_usage": 0, "byok_usage_daily": 0, "byok_usage_weekly": 0, "byok_usage_monthly": 0,
        "is_free_tier": False, "is_management_key": False, "is_provisioning_key": False,
        "creator_user_id": None, "expires_at": None,
        "rate_limit": {"requests": -1, "interval": "10s", "note": "This field is deprecated and safe to ignore."},
    }}
