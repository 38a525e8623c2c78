"""Per-key spending: usage by reset period, and reservations that keep concurrent requests under a limit.

The durable truth is the generations table (each row's `total_cost`); the ledger is its running
sum in memory, loaded at start (`Store.open`) and advanced by every charge, so the pre-flight
check on the request path never queries the database. Amounts are Decimal: a limit check that
compares sums of many tiny float costs would drift.

Invariant: for a key with a limit, spent(period) + reserved <= limit after every `reserve`, and a
charge never exceeds the reservation it settles (the caller reserves the worst case), so spending
never passes the limit however many requests run at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

PERIODS = ("daily", "weekly", "monthly")


def period_start(period: str, now: datetime) -> datetime:
    """Start of the UTC day / week (Monday) / month holding `now` (an aware UTC datetime)."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}")


def next_period_start(period: str, now: datetime) -> datetime:
    start = period_start(period, now)
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass
class _Account:
    total: Decimal = Decimal(0)
    # period -> (start of the period the amount belongs to, amount spent in it)
    periods: dict[str, tuple[datetime, Decimal]] = field(default_factory=dict)
    reserved: Decimal = Decimal(0)

    def spent(self, period: str | None, now: datetime) -> Decimal:
        if period is None:
            return self.total
        start, amount = self.periods.get(period, (None, Decimal(0)))
        return amount if start == period_start(period, now) else Decimal(0)


@dataclass(frozen=True)
class Usage:
    total: float
    daily: float
    weekly: float
    monthly: float


@dataclass
class Reservation:
    """Money held for one request until it is charged or released (each happens at most once)."""

    key_hash: str
    amount: Decimal
    open: bool = True


class LimitExceeded(Exception):
    def __init__(self, remaining: Decimal):
        super().__init__(f"only {remaining} USD remain under the key's limit")
        self.remaining = remaining


class Ledger:
    """Thread-safe (the writer thread never touches it, but tests and sync callers may)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}

    def load(self, key_hash: str, total: float, per_period: dict[str, float], now: datetime) -> None:
        """Seed a key's sums from the database (`per_period` = spent since each period's start)."""
        with self._lock:
            self._accounts[key_hash] = _Account(
                total=Decimal(str(total)),
                periods={p: (period_start(p, now), Decimal(str(per_period.get(p, 0.0)))) for p in PERIODS})

    def usage(self, key_hash: str, now: datetime) -> Usage:
        with self._lock:
            acct = self._accounts.get(key_hash) or _Account()
            return Usage(float(acct.total), *(float(acct.spent(p, now)) for p in PERIODS))

    def remaining(self, key_hash: str, limit: float | None, limit_reset: str | None, now: datetime) -> float | None:
        """What the key may still spend now (reservations held by running requests excluded)."""
        if limit is None:
            return None
        with self._lock:
            acct = self._accounts.get(key_hash) or _Account()
            return float(max(Decimal(0), Decimal(str(limit)) - acct.spent(limit_reset, now)))

    def reserve(self, key_hash: str, amount: Decimal, limit: float | None, limit_reset: str | None,
                now: datetime) -> Reservation:
        """Hold `amount` for a request, or raise LimitExceeded with what is left to hold."""
        with self._lock:
            acct = self._accounts.setdefault(key_hash, _Account())
            if limit is not None:
                free = Decimal(str(limit)) - acct.spent(limit_reset, now) - acct.reserved
                if amount > free:
                    raise LimitExceeded(max(Decimal(0), free))
            acct.reserved += amount
            return Reservation(key_hash, amount)

    def release(self, res: Reservation) -> None:
        """Drop a reservation without charging (no-op when already charged or released)."""
        with self._lock:
            if res.open:
                res.open = False
                self._accounts[res.key_hash].reserved -= res.amount

    def charge(self, key_hash: str, cost: Decimal, when: datetime, res: Reservation | None = None) -> None:
        """Add a finished request's cost to every period holding `when`, releasing `res` with it."""
        with self._lock:
            acct = self._accounts.setdefault(key_hash, _Account())
            if res is not None and res.open:
                res.open = False
                acct.reserved -= res.amount
            acct.total += cost
            for p in PERIODS:
                start = period_start(p, when)
                held_start, amount = acct.periods.get(p, (start, Decimal(0)))
                if start < held_start:
                    continue  # a request that began in a period already over: only the total moves
                acct.periods[p] = (start, (amount if held_start == start else Decimal(0)) + cost)

    def reserved(self, key_hash: str) -> Decimal:
        with self._lock:
            acct = self._accounts.get(key_hash)
            return acct.reserved if acct else Decimal(0)
