"""GET /health (readiness and load failures) and /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gemmaserve.api.state import ServerState

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state: ServerState = request.app.state.gs
    if state.ready:
        return {"status": "ok"}
    if state.load_error is not None:
        return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
    status = "loading" if state.engine is None else "unavailable"
    return JSONResponse({"status": status}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request):
    state: ServerState = request.app.state.gs
    stats = None
    if state.engine is not None:
        try:
            stats = state.engine.stats()
        except Exception:
            stats = None  # a dead engine still lets the HTTP counters be scraped
    return Response(state.metrics.render(stats), media_type=CONTENT_TYPE_LATEST)
