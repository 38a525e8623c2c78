"""Bearer-key auth: keys are compared by sha256 so the keys file never holds a usable secret."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from fastapi import Request

from gemmaserve.api.errors import APIError


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_key_hashes(path: str | Path) -> frozenset[str]:
    """One sha256 hex digest per line; blank lines and `#` comments are skipped."""
    hashes = set()
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
            raise ValueError(f"{path}:{lineno}: expected a sha256 hex digest (see `gemmaserve hash-key`)")
        hashes.add(line)
    if not hashes:
        raise ValueError(f"{path}: no key hashes found")
    return frozenset(hashes)


def check_bearer(authorization: str | None, accepted: frozenset[str]) -> None:
    """Raise the OpenRouter 401 bodies (spec §1.3) unless the header carries an accepted key."""
    if not accepted:
        return
    if not authorization:
        raise APIError(401, "No auth credentials found", "authentication")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise APIError(401, "No auth credentials found", "authentication")
    digest = hash_key(key)
    # compare_digest against every entry: no early exit that leaks which prefix matched.
    if not any(hmac.compare_digest(digest, h) for h in accepted):
        raise APIError(401, "User not found.", "authentication")


async def require_auth(request: Request) -> None:
    """FastAPI dependency for the endpoints OpenRouter authenticates."""
    state = request.app.state.gs
    check_bearer(request.headers.get("authorization"), state.config.api_key_hashes)
