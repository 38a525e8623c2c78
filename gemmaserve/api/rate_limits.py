"""Per-key request rate limits (requests per minute and per UTC day) with OpenRouter's 429.

Counters live in memory: a restart forgets the minute window (harmless) and the day's count (a
key may make its daily number again after a restart; the spending limit, which is durable, is
the control that guards money)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from gemmaserve.api.errors import APIError

_DAY_S = 86_400


@dataclass
class _Window:
    minute: deque = field(default_factory=deque)  # epoch seconds of the last minute's requests
    day: int = -1  # UTC day number the count belongs to
    day_count: int = 0


class RateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def admit(self, key_hash: str, per_minute: int | None, per_day: int | None, now: float | None = None) -> None:
        """Count one request for the key, or raise the 429 when a limit is reached (not counted)."""
        if per_minute is None and per_day is None:
            return
        now = time.time() if now is None else now
        with self._lock:
            w = self._windows.setdefault(key_hash, _Window())
            while w.minute and w.minute[0] <= now - 60:
                w.minute.popleft()
            today = int(now // _DAY_S)
            if w.day != today:
                w.day, w.day_count = today, 0
            if per_minute is not None and len(w.minute) >= per_minute:
                raise _limited(per_minute, w.minute[0] + 60, now, "requests-per-minute")
            if per_day is not None and w.day_count >= per_day:
                raise _limited(per_day, (today + 1) * _DAY_S, now, "requests-per-day")
            w.minute.append(now)
            w.day_count += 1


def _limited(limit: int, reset_at: float, now: float, which: str) -> APIError:
    headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0",
               "X-RateLimit-Reset": str(int(reset_at * 1000)),
               "Retry-After": str(max(1, math.ceil(reset_at - now)))}
    return APIError(429, f"Rate limit exceeded: {which}. Retry after the reset time.", "rate_limit_exceeded",
                    {"headers": {k: v for k, v in headers.items() if k.startswith("X-")}, "provider_name": None,
                     "limit_source": f"key_{which.replace('-', '_')}"}, headers=headers)
