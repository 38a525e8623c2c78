"""API keys at rest: the digest a keys file holds for each accepted key (store.keys.hash_key),
reading that file, checking a presented key against the accepted digests, and where a request
carries its key."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Mapping

from gemmaserve.store.keys import hash_key

# The keys file holds unsalted sha256 digests. For a random key that is enough: with 190 bits of
# randomness (32 base62 characters) there is nothing to search, salt or no salt. A short or
# chosen key is another matter (a leaked file gives it to a dictionary attack), so `hash-key`
# refuses keys shorter than this and `--generate` makes random ones.
MIN_KEY_CHARS = 32


__all__ = ["MIN_KEY_CHARS", "authorization", "hash_key", "load_key_hashes", "matching_digest", "new_key", "read_key_file"]


def new_key() -> str:
    """A random key in OpenRouter's look: sk-gs-v1- and 64 hex digits (256 bits)."""
    return "sk-gs-v1-" + secrets.token_hex(32)


def read_key_file(path: str | Path) -> str:
    """The bearer key on the first line of `path` (for --api-key-file; blank is an error)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    key = lines[0].strip() if lines else ""
    if not key:
        raise ValueError(f"{path}: no key on the first line")
    return key


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


def matching_digest(key: str, accepted: frozenset[str]) -> str | None:
    """The accepted digest `key` hashes to, or None."""
    digest = hash_key(key)
    # compare_digest against every entry: no early exit that leaks which prefix matched.
    found = None
    for h in accepted:
        if hmac.compare_digest(digest, h):
            found = h
    return found


def authorization(headers: Mapping[str, str]) -> str | None:
    """The Authorization header, or Anthropic's `x-api-key` as a Bearer credential (Anthropic's SDK
    and Claude Code send either)."""
    auth = headers.get("authorization")
    if not auth and headers.get("x-api-key"):
        return f"Bearer {headers['x-api-key']}"
    return auth
