"""Read side of the store: usage sums, /generation, /activity, live endpoint stats, model-page series.

Every function takes an open Session and an aware UTC `now`, and returns plain values; bucketing by
UTC day/hour is done in SQL so a busy month never travels to Python, percentiles in Python over
one window's rows (the 30-minute window of a busy server is thousands of rows, not millions)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from gemmaserve.store.ledger import PERIODS, period_start
from gemmaserve.store.records import GenerationRecord
from gemmaserve.store.schema import Generation, GenerationContent, RequestOutcome

G, O = Generation, RequestOutcome


def _bucket(session: Session, column, unit: str):
    """SQL for the UTC day ('YYYY-MM-DD') or hour ('YYYY-MM-DDTHH') holding `column`."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(column, "YYYY-MM-DD" if unit == "day" else 'YYYY-MM-DD"T"HH24')
    return func.strftime("%Y-%m-%d" if unit == "day" else "%Y-%m-%dT%H", column)


def key_usage_sums(session: Session, now: datetime) -> dict[str, dict[str, float]]:
    """{key hash: {"total", "daily", "weekly", "monthly"}} spent, for seeding the ledger."""
    cols = [func.sum(G.total_cost)]
    for p in PERIODS:
        cols.append(func.sum(case((G.created_at >= period_start(p, now), G.total_cost), else_=0.0)))
    rows = session.execute(select(G.api_key_hash, *cols).where(G.api_key_hash.is_not(None))
                           .group_by(G.api_key_hash)).all()
    return {h: {"total": t or 0.0, **{p: v or 0.0 for p, v in zip(PERIODS, vals)}} for h, t, *vals in rows}


def total_usage(session: Session) -> float:
    return float(session.scalar(select(func.coalesce(func.sum(G.total_cost), 0.0))) or 0.0)


def generation(session: Session, gen_id: str) -> GenerationRecord | None:
    row = session.get(Generation, gen_id)
    return None if row is None else GenerationRecord.from_row(row)


def content(session: Session, gen_id: str) -> dict[str, Any] | None:
    row = session.get(GenerationContent, gen_id)
    return None if row is None else {"input": row.input, "output": row.output, "error": row.error}


def activity(session: Session, now: datetime, date: str | None = None,
             api_key_hash: str | None = None) -> list[dict[str, Any]]:
    """OpenRouter's /activity rows: the last 30 completed UTC days (today excluded), one row per
    date x model x endpoint (api_type), newest day first. With `date` only that day's rows, and
    today may be asked for by date (its rows so far)."""
    today = period_start("daily", now)
    day = _bucket(session, G.created_at, "day")
    end = today + timedelta(days=1) if date is not None else today
    q = (select(day, G.model, G.api_type, func.count(), func.sum(G.tokens_prompt), func.sum(G.tokens_completion),
                func.sum(G.tokens_reasoning), func.sum(G.total_cost))
         .where(G.created_at >= today - timedelta(days=30), G.created_at < end)
         .group_by(day, G.model, G.api_type).order_by(day.desc(), G.model, G.api_type))
    if date is not None:
        q = q.where(day == date)
    if api_key_hash is not None:
        q = q.where(G.api_key_hash == api_key_hash)
    return [{"date": d, "model": m, "api_type": a, "requests": n, "prompt_tokens": int(p or 0),
             "completion_tokens": int(c or 0), "reasoning_tokens": int(r or 0), "usage": float(u or 0.0)}
            for d, m, a, n, p, c, r, u in session.execute(q).all()]


def percentiles(values: list[float], points=(50, 75, 90, 99)) -> dict[str, float] | None:
    """Nearest-rank percentiles (p50...p99) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    out = {}
    for p in points:
        rank = max(1, -(-p * n // 100))  # ceil(p/100 * n), 1-based
        out[f"p{p}"] = round(float(ordered[rank - 1]), 2)
    return out


def uptime(session: Session, since: datetime, min_samples: int) -> float | None:
    """Percent of counted requests since `since` that were not errors; None under `min_samples`."""
    ok, err = session.execute(
        select(func.sum(case((O.is_error.is_(False), 1), else_=0)), func.sum(case((O.is_error.is_(True), 1), else_=0)))
        .where(O.created_at >= since)).one()
    ok, err = int(ok or 0), int(err or 0)
    if ok + err < max(1, min_samples):
        return None
    return round(100.0 * ok / (ok + err), 2)


def _throughputs(rows) -> list[float]:
    # Output tokens over the whole generation time, queueing and time to first token included.
    return [tokens * 1000.0 / ms for tokens, ms in rows if tokens and ms]


def endpoint_stats(session: Session, now: datetime, min_samples: int) -> dict[str, Any]:
    """uptime_last_5m/30m/1d, latency_last_30m (TTFT ms) and throughput_last_30m (tok/s)."""
    since30 = now - timedelta(minutes=30)
    ttfts = session.scalars(select(O.ttft_ms).where(O.created_at >= since30, O.ttft_ms.is_not(None))).all()
    tput = session.execute(select(O.tokens_completion, O.duration_ms)
                           .where(O.created_at >= since30, O.is_error.is_(False))).all()
    return {
        "uptime_last_5m": uptime(session, now - timedelta(minutes=5), min_samples),
        "uptime_last_30m": uptime(session, since30, min_samples),
        "uptime_last_1d": uptime(session, now - timedelta(days=1), min_samples),
        "latency_last_30m": percentiles(list(ttfts)),
        "throughput_last_30m": percentiles(_throughputs(tput)),
    }


def uptime_hourly(session: Session, now: datetime, hours: int = 72) -> list[dict[str, Any]]:
    """Per UTC hour of the last `hours`: counted requests, errors, and uptime percent (None if none)."""
    hour = _bucket(session, O.created_at, "hour")
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = session.execute(
        select(hour, func.sum(case((O.is_error.is_(False), 1), else_=0)), func.sum(case((O.is_error.is_(True), 1), else_=0)))
        .where(O.created_at >= start).group_by(hour)).all()
    by_hour = {h: (int(ok or 0), int(err or 0)) for h, ok, err in rows}
    out = []
    for i in range(hours):
        key = (start + timedelta(hours=i)).strftime("%Y-%m-%dT%H")
        ok, err = by_hour.get(key, (0, 0))
        out.append({"hour": key + ":00Z", "requests": ok + err, "errors": err,
                    "uptime": round(100.0 * ok / (ok + err), 2) if ok + err else None})
    return out


def performance_hourly(session: Session, now: datetime, hours: int = 24) -> list[dict[str, Any]]:
    """Per UTC hour with answered traffic in the last `hours`: TTFT p50 (ms) and throughput p50 (tok/s)."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = session.execute(select(O.created_at, O.ttft_ms, O.tokens_completion, O.duration_ms, O.is_error)
                           .where(O.created_at >= start).order_by(O.created_at)).all()
    buckets: dict[str, tuple[list[float], list[tuple[int, int]]]] = {}
    for created, ttft, tokens, ms, is_error in rows:
        ttfts, tput = buckets.setdefault(created.strftime("%Y-%m-%dT%H:00Z"), ([], []))
        if ttft is not None:
            ttfts.append(ttft)
        if is_error is False:
            tput.append((tokens, ms))
    out = []
    for hour, (ttfts, tput) in sorted(buckets.items()):
        lat, thr = percentiles(ttfts, (50,)), percentiles(_throughputs(tput), (50,))
        if lat is None and thr is None:
            continue  # an hour of refusals only: nothing to plot
        out.append({"hour": hour, "latency_p50": lat and lat["p50"], "throughput_p50": thr and thr["p50"]})
    return out


def tokens_daily(session: Session, now: datetime, days: int = 30) -> list[dict[str, Any]]:
    """Prompt, completion and reasoning tokens per UTC day of the last `days` (today included)."""
    day = _bucket(session, G.created_at, "day")
    start = period_start("daily", now) - timedelta(days=days - 1)
    rows = session.execute(select(day, func.sum(G.tokens_prompt), func.sum(G.tokens_completion),
                                  func.sum(G.tokens_reasoning), func.count())
                           .where(G.created_at >= start).group_by(day)).all()
    by_day = {d: (int(p or 0), int(c or 0), int(r or 0), n) for d, p, c, r, n in rows}
    out = []
    for i in range(days):
        key = (start + timedelta(days=i)).strftime("%Y-%m-%d")
        p, c, r, n = by_day.get(key, (0, 0, 0, 0))
        out.append({"date": key, "prompt_tokens": p, "completion_tokens": c, "reasoning_tokens": r, "requests": n})
    return out


def top_apps(session: Session, now: datetime, days: int = 30, limit: int = 20) -> list[dict[str, Any]]:
    """Apps by tokens over the last `days`: only generations that sent HTTP-Referer count (an app's
    identity on OpenRouter); the name is a title it sent (X-OpenRouter-Title / X-Title), else the referer."""
    since = now - timedelta(days=days)
    tokens = func.sum(G.tokens_prompt + G.tokens_completion)
    rows = session.execute(select(G.http_referer, func.max(G.app_title), func.count(), tokens)
                           .where(G.created_at >= since, G.http_referer.is_not(None), G.http_referer != "")
                           .group_by(G.http_referer).order_by(tokens.desc()).limit(limit)).all()
    return [{"app": title or ref, "url": ref, "requests": n, "tokens": int(t or 0)} for ref, title, n, t in rows]


def tokens_since(session: Session, since: datetime) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(G.tokens_prompt + G.tokens_completion), 0))
                              .where(G.created_at >= since)) or 0)
