"""The spending ledger: UTC periods, reservations under concurrency, charges across resets."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from gemmaserve.store.ledger import Ledger, LimitExceeded, next_period_start, period_start

UTC = timezone.utc


def test_periods_are_utc_days_monday_weeks_and_months():
    t = datetime(2026, 12, 6, 23, 59, 59, tzinfo=UTC)  # a Sunday
    assert period_start("daily", t) == datetime(2026, 12, 6, tzinfo=UTC)
    assert period_start("weekly", t) == datetime(2026, 11, 30, tzinfo=UTC)  # Monday
    assert period_start("monthly", t) == datetime(2026, 12, 1, tzinfo=UTC)
    assert next_period_start("weekly", t) == datetime(2026, 12, 7, tzinfo=UTC)
    assert next_period_start("monthly", datetime(2026, 12, 31, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        period_start("yearly", t)


def test_daily_limit_resets_at_utc_midnight():
    led = Ledger()
    day1 = datetime(2026, 12, 8, 23, 0, tzinfo=UTC)
    day2 = datetime(2026, 12, 9, 0, 0, tzinfo=UTC)
    res = led.reserve("k", Decimal("0.6"), 1.0, "daily", day1)
    led.charge("k", Decimal("0.6"), day1, res)
    with pytest.raises(LimitExceeded) as exc:
        led.reserve("k", Decimal("0.5"), 1.0, "daily", day1)
    assert exc.value.remaining == Decimal("0.4")
    assert led.remaining("k", 1.0, "daily", day2) == 1.0
    led.release(led.reserve("k", Decimal("1.0"), 1.0, "daily", day2))
    # Without a reset period the limit counts all spending ever.
    with pytest.raises(LimitExceeded):
        led.reserve("k", Decimal("0.5"), 1.0, None, day2)
    u = led.usage("k", day2)
    assert (u.total, u.daily, u.weekly, u.monthly) == (0.6, 0.0, 0.6, 0.6)


def test_late_charge_for_a_past_period_moves_only_the_total():
    led = Ledger()
    old, new = datetime(2026, 12, 8, 23, 59, tzinfo=UTC), datetime(2026, 12, 9, 0, 1, tzinfo=UTC)
    led.charge("k", Decimal("1"), new)
    led.charge("k", Decimal("2"), old)  # began yesterday, finished today
    u = led.usage("k", new)
    assert (u.total, u.daily) == (3.0, 1.0)


def test_concurrent_reservations_never_overspend():
    led = Ledger()
    now = datetime(2026, 12, 9, 12, tzinfo=UTC)
    limit, each = 1.0, Decimal("0.03")
    granted, refused = [], []
    barrier = threading.Barrier(64)

    def one():
        barrier.wait()
        try:
            res = led.reserve("k", each, limit, None, now)
        except LimitExceeded:
            refused.append(1)
            res = None
        else:
            granted.append(res)
        barrier.wait()  # every request is in flight (holding its reservation) before any ends
        if res is not None:
            led.charge("k", each / 2, now, res)  # the actual cost is at most the reservation

    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 33 and len(refused) == 31  # 33 x 0.03 <= 1 < 34 x 0.03
    assert led.reserved("k") == 0 and led.usage("k", now).total == float(33 * each / 2)
    assert led.remaining("k", limit, None, now) >= 0
