"""OpenRouter's response cache (platform spec §6): request directives, the key, a bounded in-memory
store of whole answers and SSE streams, and the replay of a hit (new gen- id, zero usage)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gemmaserve.api.errors import APIError
from gemmaserve.api.keys import authorization, hash_key
from gemmaserve.api.sse import SSEResponse
from gemmaserve.types import FinishReason

if TYPE_CHECKING:
    from gemmaserve.api.generation import Generation

DEFAULT_TTL_S = 300
MAX_TTL_S = 86_400
_TRUE = {"true", "1", "yes", "on"}


@dataclass(frozen=True)
class Directives:
    """What the request's X-OpenRouter-Cache* headers ask for."""

    ttl_s: int
    clear: bool


def directives(headers: Mapping[str, str]) -> Directives | None:
    """None unless `X-OpenRouter-Cache: true`; a bad TTL is a 400 naming the header."""
    if (headers.get("x-openrouter-cache") or "").strip().lower() not in _TRUE:
        return None
    raw = headers.get("x-openrouter-cache-ttl")
    ttl = DEFAULT_TTL_S
    if raw is not None:
        try:
            ttl = int(raw.strip())
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL_S:
            raise APIError(400, f"Invalid value for header 'X-OpenRouter-Cache-TTL': {raw!r} is not an integer "
                           f"from 1 to {MAX_TTL_S}", "invalid_request", {"param": "X-OpenRouter-Cache-TTL"})
    clear = (headers.get("x-openrouter-cache-clear") or "").strip().lower() in _TRUE
    return Directives(ttl, clear)


def cache_key(api_key: str | None, model: str, endpoint: str, stream: bool, body: bytes) -> str:
    """API key + model + endpoint + stream flag + sha256 of the body, as OpenRouter keys it."""
    h = hashlib.sha256()
    for piece in (api_key or "", model, endpoint, "1" if stream else "0"):
        h.update(piece.encode("utf-8") + b"\0")
    h.update(hashlib.sha256(body).digest())
    return h.hexdigest()


@dataclass
class Entry:
    """A stored answer: a JSON body, or the SSE frames of a stream (keep-alive comments left out)."""

    body: dict[str, Any] | None
    frames: list[bytes] | None
    gen_id: str
    stored_at: float
    ttl_s: int

    @property
    def size(self) -> int:
        if self.frames is not None:
            return sum(len(f) for f in self.frames)
        return len(json.dumps(self.body))

    def age(self, now: float) -> int:
        return int(now - self.stored_at)


class ResponseCache:
    """LRU map key -> Entry, bounded in entries and bytes; expired entries are dropped when met."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 64 * 1024 * 1024):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Entry, int]] = OrderedDict()  # key -> (entry, its size)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str, now: float | None = None) -> Entry | None:
        item = self._items.get(key)
        if item is None:
            return None
        entry = item[0]
        now = time.time() if now is None else now
        if now - entry.stored_at >= entry.ttl_s:
            self.clear(key)
            return None
        self._items.move_to_end(key)
        return entry

    def clear(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[1]

    def put(self, key: str, entry: Entry) -> None:
        size = entry.size
        if size > self.max_bytes:
            return  # would evict everything else and still not fit
        self.clear(key)
        self._items[key] = (entry, size)
        self._bytes += size
        while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, old_size) = self._items.popitem(last=False)
            self._bytes -= old_size


def _zero_usage(obj: Any) -> Any:
    """Every number under a `usage` object set to 0 (booleans kept): a hit is not billed."""
    if isinstance(obj, dict):
        return {k: (_zeroed(v) if k == "usage" else _zero_usage(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_zero_usage(v) for v in obj]
    return obj


def _zeroed(obj: Any) -> Any:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, float)):
        return type(obj)(0)
    if isinstance(obj, dict):
        return {k: _zeroed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_zeroed(v) for v in obj]
    return obj


def replay_body(entry: Entry, gen_id: str) -> dict[str, Any]:
    """The stored JSON answer under a new generation id, with zero usage."""
    assert entry.body is not None
    text = json.dumps(entry.body).replace(entry.gen_id, gen_id)
    return _zero_usage(json.loads(text))


def replay_frame(frame: bytes, old_id: str, gen_id: str) -> bytes:
    """One stored SSE frame under a new generation id, any usage in its data zeroed."""
    text = frame.decode("utf-8").replace(old_id, gen_id)
    lines = []
    for line in text.split("\n"):
        if line.startswith("data: ") and line[6:7] == "{":
            line = "data: " + json.dumps(_zero_usage(json.loads(line[6:])), separators=(",", ":"), ensure_ascii=False)
        lines.append(line)
    return "\n".join(lines).encode("utf-8")


def cache_headers(status: str, ttl_s: int, age_s: int | None = None) -> dict[str, str]:
    headers = {"X-OpenRouter-Cache-Status": status, "X-OpenRouter-Cache-TTL": str(ttl_s)}
    if age_s is not None:
        headers["X-OpenRouter-Cache-Age"] = str(age_s)
    return headers


class CacheSlot:
    """One request's place in the cache: looked up before the ledger opens; a miss that ends well
    (stop or length, whole or streamed to the end) is stored under the same key."""

    def __init__(self, cache: ResponseCache, key: str, ttl_s: int):
        self.cache, self.key, self.ttl_s = cache, key, ttl_s

    def lookup(self) -> Entry | None:
        return self.cache.get(self.key)

    def replay(self, entry: Entry, gen_id: str, stream: bool) -> Response:
        now = time.time()
        headers = {"X-Generation-Id": gen_id, **cache_headers("HIT", entry.ttl_s, entry.age(now))}
        if not stream:
            return JSONResponse(replay_body(entry, gen_id), headers=headers)
        frames = entry.frames or []

        async def replayed() -> AsyncIterator[bytes]:
            for frame in frames:
                yield replay_frame(frame, entry.gen_id, gen_id)

        return SSEResponse(replayed(), headers=headers)

    def miss_headers(self) -> dict[str, str]:
        return cache_headers("MISS", self.ttl_s)

    def keep_body(self, body: dict[str, Any], gen: "Generation") -> None:
        if _succeeded(gen):
            self.cache.put(self.key, Entry(body, None, gen.gen_id, time.time(), self.ttl_s))

    async def captured(self, frames: AsyncIterator[bytes], gen: "Generation",
                       keepalive: bytes) -> AsyncIterator[bytes]:
        """`frames` passed through; kept (keep-alives left out) once the stream ran to a good end."""
        kept: list[bytes] = []
        async for frame in frames:
            if frame != keepalive:
                kept.append(frame)
            yield frame
        if _succeeded(gen):
            self.cache.put(self.key, Entry(None, kept, gen.gen_id, time.time(), self.ttl_s))


def _succeeded(gen: "Generation") -> bool:
    last = gen.run.last if gen.run is not None else None
    return last is not None and last.finished and last.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)


async def open_slot(request: Request, gen: "Generation", stream: bool) -> CacheSlot | None:
    """The request's cache slot when it asked for caching (X-OpenRouter-Cache: true), else None.
    The key's API-key part is the accepted key's digest (the presented credential's on an open
    server); the endpoint part ignores the /api prefix, so /v1/x and /api/v1/x share entries."""
    d = directives(request.headers)
    if d is None:
        return None
    cache: ResponseCache = gen.state.response_cache
    credential = gen.admission.key_hash or hash_key(authorization(request.headers) or "")
    key = cache_key(credential, gen.model, request.url.path.removeprefix("/api"), stream, await request.body())
    if d.clear:
        cache.clear(key)
    return CacheSlot(cache, key, d.ttl_s)
