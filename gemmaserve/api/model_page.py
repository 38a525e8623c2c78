"""The model page at `/` and at the model's path, the keys page at `/keys`, their static files,
and GET /api/frontend/stats: the public series the page draws (from the store)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from gemmaserve.api.errors import APIError
from gemmaserve.store import Store, queries, utcnow
from gemmaserve.web import PAGES, STATIC_DIR

router = APIRouter()


def mount_static(app) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@router.get("/", include_in_schema=False)
async def model_page():
    return FileResponse(PAGES["model"])


@router.get("/keys", include_in_schema=False)
async def keys_page():
    return FileResponse(PAGES["keys"])


@router.get("/{author}/{slug}", include_in_schema=False)
async def model_page_at_model_path(author: str, slug: str, request: Request):
    if f"{author}/{slug}" not in request.app.state.gs.config.accepted_model_ids:
        raise APIError(404, f"No page at /{author}/{slug}", "not_found")
    return FileResponse(PAGES["model"])


def page_stats(store: Store) -> dict[str, Any]:
    """Everything the page's charts need, read in one session."""
    now = utcnow()
    with store.session() as s:
        return {
            "generated_at": now.isoformat().replace("+00:00", "Z"),
            "weekly_tokens": queries.tokens_since(s, now - timedelta(days=7)),
            "uptime_last_24h": queries.uptime(s, now - timedelta(days=1), 1),
            "uptime_hourly": queries.uptime_hourly(s, now, 72),
            "performance_hourly": queries.performance_hourly(s, now, 24),
            "tokens_daily": queries.tokens_daily(s, now, 30),
            "apps": queries.top_apps(s, now, 30, 20),
        }


def _empty_stats() -> dict[str, Any]:
    return {"generated_at": None, "weekly_tokens": None, "uptime_last_24h": None, "uptime_hourly": [],
            "performance_hourly": [], "tokens_daily": [], "apps": []}


@router.get("/api/frontend/stats")
async def frontend_stats(request: Request):
    store = getattr(request.app.state.gs, "store", None)
    if store is None:
        return _empty_stats()
    return await asyncio.to_thread(page_stats, store)
