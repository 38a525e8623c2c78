"""Who is calling: the bearer key resolved to a Caller (static key, stored key, management key),
with OpenRouter's 401/403 for keys that are unknown, disabled, expired or of the wrong kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from gemmaserve.api.errors import APIError
from gemmaserve.api.keys import authorization
from gemmaserve.store import KeyRecord, hash_key, utcnow


@dataclass(frozen=True)
class Caller:
    """`key_hash` None = an open server's anonymous caller. `record` is the stored key (limits,
    rate limits, management flag); None for keys known only by hash from --api-key(s-file)."""

    key_hash: str | None
    record: KeyRecord | None = None
    management: bool = False
    bearer: str | None = None  # the presented key (never stored; used for the masked label)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def is_open(state: Any) -> bool:
    """No key of any kind configured: every request is served anonymously."""
    cfg = state.config
    store = getattr(state, "store", None)
    return not cfg.api_key_hashes and not getattr(cfg, "management_key_hashes", frozenset()) and not (
        store is not None and store.keys)


def resolve_caller(state: Any, authorization: str | None) -> Caller:
    """The Caller for an Authorization header, or the OpenRouter 401 (spec §1.3)."""
    key = _bearer(authorization)
    store = getattr(state, "store", None)
    if key is None:
        if is_open(state):
            return Caller(None)
        raise APIError(401, "No auth credentials found", "authentication")
    digest = hash_key(key)
    # Set membership on the digest, not the key: a timing difference reveals nothing usable.
    if digest in getattr(state.config, "management_key_hashes", frozenset()):
        return Caller(digest, None, management=True, bearer=key)
    if digest in state.config.api_key_hashes:
        return Caller(digest, store.keys.get(digest) if store is not None else None, bearer=key)
    record = store.keys.get(digest) if store is not None else None
    if record is None:
        if is_open(state):
            return Caller(None)
        raise APIError(401, "User not found.", "authentication")
    if record.disabled:
        raise APIError(401, "This API key is disabled.", "authentication")
    if record.expired(utcnow()):
        raise APIError(401, "This API key has expired.", "authentication")
    return Caller(digest, record, management=record.is_management, bearer=key)


async def caller_of(request: Request) -> Caller:
    """The request's Caller, resolved once and kept on request.state."""
    caller = getattr(request.state, "caller", None)
    if caller is None:
        caller = resolve_caller(request.app.state.gs, authorization(request.headers))
        request.state.caller = caller
    return caller


async def require_inference_key(request: Request) -> Caller:
    """Dependency of the generation endpoints: any valid key except a management key."""
    caller = await caller_of(request)
    if caller.management:
        raise APIError(403, "Management keys cannot be used for inference; use an API key made with "
                       "POST /api/v1/keys.", "permission_denied")
    return caller


async def require_management_key(request: Request) -> Caller:
    """Dependency of the key-management, credits and activity endpoints."""
    caller = await caller_of(request)
    if not caller.management:
        raise APIError(403, "This endpoint requires a management key (gemmaserve keys create --management).",
                       "permission_denied")
    return caller
