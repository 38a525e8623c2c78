"""The per-key request limiter: a sliding minute and the UTC day, with OpenRouter's 429 headers."""

from __future__ import annotations

import pytest

from gemmaserve.api.errors import APIError
from gemmaserve.api.rate_limits import RateLimiter

DAY = 86_400


def test_minute_window_slides():
    rl = RateLimiter()
    t = 10 * DAY + 100.0
    rl.admit("k", 2, None, t)
    rl.admit("k", 2, None, t + 10)
    with pytest.raises(APIError) as exc:
        rl.admit("k", 2, None, t + 20)
    err = exc.value
    assert err.status == 429 and err.headers["X-RateLimit-Reset"] == str(int((t + 60) * 1000))
    assert err.headers["Retry-After"] == "40" and err.headers["X-RateLimit-Remaining"] == "0"
    rl.admit("k", 2, None, t + 60.5)  # the first request left the window
    rl.admit("other", 2, None, t + 20)  # per key


def test_day_limit_resets_at_utc_midnight():
    rl = RateLimiter()
    t = 10 * DAY + DAY - 30.0  # 30 s before midnight
    for i in range(3):
        rl.admit("k", None, 3, t + i)
    with pytest.raises(APIError) as exc:
        rl.admit("k", None, 3, t + 5)
    assert exc.value.headers["X-RateLimit-Reset"] == str(11 * DAY * 1000)
    assert exc.value.headers["Retry-After"] == "25"
    rl.admit("k", None, 3, 11 * DAY + 1.0)  # a new UTC day
