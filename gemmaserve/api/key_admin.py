"""Keys as OpenRouter has them (spec §8.2-8.4): the management API (GET/POST /api/v1/keys,
GET/PATCH/DELETE /api/v1/keys/{hash}), GET /api/v1/key for the calling key, GET /api/v1/credits."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gemmaserve.api.callers import Caller, caller_of, require_management_key
from gemmaserve.api.errors import APIError
from gemmaserve.protocol.keys import CreateKeyRequest, UpdateKeyRequest
from gemmaserve.store import KeyRecord, Store, queries, utcnow

router = APIRouter()

PAGE_SIZE = 100  # OpenRouter's page size for GET /keys
_RATE_LIMIT_NOTE = {"requests": -1, "interval": "10s", "note": "This field is deprecated and safe to ignore."}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def _store(request: Request) -> Store:
    store = getattr(request.app.state.gs, "store", None)
    if store is None:
        raise APIError(404, "Key management needs the store (serve without --no-store).", "not_found")
    return store


def usage_fields(store: Store | None, key_hash: str | None, limit: float | None,
                 limit_reset: str | None) -> dict[str, Any]:
    """usage / usage_daily / weekly / monthly and limit_remaining for one key, from the ledger."""
    now = utcnow()
    if store is None or key_hash is None:
        u = (0.0, 0.0, 0.0, 0.0)
        remaining = limit
    else:
        usage = store.ledger.usage(key_hash, now)
        u = (usage.total, usage.daily, usage.weekly, usage.monthly)
        remaining = store.ledger.remaining(key_hash, limit, limit_reset, now)
    return {"limit": limit, "limit_remaining": remaining, "limit_reset": limit_reset, "include_byok_in_limit": False,
            "usage": u[0], "usage_daily": u[1], "usage_weekly": u[2], "usage_monthly": u[3],
            "byok_usage": 0, "byok_usage_daily": 0, "byok_usage_weekly": 0, "byok_usage_monthly": 0}


def key_object(store: Store, rec: KeyRecord) -> dict[str, Any]:
    """The management API's Key object (spec §8.4), with gemmaserve's rate-limit fields."""
    return {"hash": rec.hash, "name": rec.name, "label": rec.label, "disabled": rec.disabled,
            **usage_fields(store, rec.hash, rec.limit, rec.limit_reset),
            "created_at": _iso(rec.created_at), "updated_at": _iso(rec.updated_at), "expires_at": _iso(rec.expires_at),
            "creator_user_id": None, "workspace_id": None,
            "rate_limit_rpm": rec.rate_limit_rpm, "rate_limit_rpd": rec.rate_limit_rpd}


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= utcnow():
        raise APIError(400, "expires_at must be in the future", "invalid_request", {"param": "expires_at"})


@router.get("/api/v1/keys")
async def list_keys(request: Request, offset: int = 0, include_disabled: bool = False,
                    _: Caller = Depends(require_management_key)):
    if offset < 0:
        raise APIError(400, "offset must be non-negative", "invalid_request", {"param": "offset"})
    store = _store(request)
    keys = store.list_keys(include_disabled=include_disabled)[offset:offset + PAGE_SIZE]
    return {"data": [key_object(store, k) for k in keys]}


@router.post("/api/v1/keys")
async def create_key(body: CreateKeyRequest, request: Request, _: Caller = Depends(require_management_key)):
    store = _store(request)
    _check_expiry(body.expires_at)
    rec, plaintext = await asyncio.to_thread(
        store.create_key, body.name, limit=body.limit, limit_reset=body.limit_reset, expires_at=body.expires_at,
        rate_limit_rpm=body.rate_limit_rpm, rate_limit_rpd=body.rate_limit_rpd)
    # The plaintext is in this response only: the store keeps its sha256.
    return JSONResponse({"data": key_object(store, rec), "key": plaintext}, status_code=201)


def _managed(store: Store, key_hash: str) -> KeyRecord:
    rec = store.keys.get(key_hash.lower())
    if rec is None or rec.is_management:
        raise APIError(404, f"Key {key_hash} not found", "not_found")
    return rec


@router.get("/api/v1/keys/{key_hash}")
async def get_key(key_hash: str, request: Request, _: Caller = Depends(require_management_key)):
    store = _store(request)
    return {"data": key_object(store, _managed(store, key_hash))}


@router.patch("/api/v1/keys/{key_hash}")
async def update_key(key_hash: str, body: UpdateKeyRequest, request: Request,
                     _: Caller = Depends(require_management_key)):
    store = _store(request)
    rec = _managed(store, key_hash)
    changes = body.changes()
    if "expires_at" in changes:
        _check_expiry(changes["expires_at"])
    rec = await asyncio.to_thread(store.update_key, rec.hash, **changes)
    return {"data": key_object(store, rec)}


@router.delete("/api/v1/keys/{key_hash}")
async def delete_key(key_hash: str, request: Request, _: Caller = Depends(require_management_key)):
    store = _store(request)
    rec = _managed(store, key_hash)
    await asyncio.to_thread(store.delete_key, rec.hash)
    return {"deleted": True}


def _masked(caller: Caller) -> str:
    if caller.record is not None and caller.record.label:
        return caller.record.label
    key = caller.bearer or ""
    return f"{key[:8]}...{key[-3:]}" if len(key) > 14 else ("open" if not key else "***")


@router.get("/api/v1/key")
@router.get("/api/v1/auth/key")
async def key_info(request: Request, caller: Caller = Depends(caller_of)):
    """The calling key (spec §8.2) with its true usage and what its limit leaves."""
    store = getattr(request.app.state.gs, "store", None)
    rec = caller.record
    limit, reset = (rec.limit, rec.limit_reset) if rec is not None else (None, None)
    return {"data": {
        "label": _masked(caller), **usage_fields(store, caller.key_hash, limit, reset),
        "is_free_tier": False, "is_management_key": caller.management, "is_provisioning_key": caller.management,
        "creator_user_id": None, "expires_at": _iso(rec.expires_at) if rec is not None else None,
        "rate_limit": _RATE_LIMIT_NOTE,
    }}


@router.get("/api/v1/credits")
async def credits(request: Request, _: Caller = Depends(require_management_key)):
    """A self-hosted server sells no credits: total_credits is what the operator has allowed (the sum
    of the inference keys' limits), total_usage what every generation has cost."""
    store = _store(request)
    total = sum(k.limit for k in store.list_keys(include_disabled=True) if k.limit is not None)
    used = await asyncio.to_thread(store.read, queries.total_usage)
    return {"data": {"total_credits": total, "total_usage": used}}
