"""GET /generation (stored stats), /health and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gemmaserve.api.auth import require_auth
from gemmaserve.api.errors import APIError
from gemmaserve.api.state import ServerState

router = APIRouter()


@router.get("/api/v1/generation", dependencies=[Depends(require_auth)])
@router.get("/v1/generation", dependencies=[Depends(require_auth)])
async def generation(request: Request, id: str | None = None):
    state: ServerState = request.app.state.gs
    if not id:
        raise APIError(400, "Missing required query parameter 'id'", "invalid_request", {"param": "id"})
    record = state.generations.get(id)
    if record is None:
        raise APIError(404, f"Generation {id} not found", "not_found")
    return {"data": record}


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
