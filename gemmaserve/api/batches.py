"""POST /api/beta/batches, GET /api/beta/batches[/{id}], POST .../{id}/cancel (platform spec §6).

Each item runs in-process through the app itself (httpx's ASGI transport), so it passes the same
validation, translation, generation skeleton and error envelopes as an HTTP request; the ASGI scope
carries a BatchMark instead of credentials, which gives the item background priority in the
scheduler and the batch price factor in the ledger. Results are kept inline, per item, and the
batch is saved through a BatchRepository after every item, so a restart resumes what was left."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from gemmaserve.api.admission import BATCH_SCOPE, BatchMark, require_auth
from gemmaserve.api.errors import APIError
from gemmaserve.api.generation import random_alnum
from gemmaserve.api.state import ServerState
from gemmaserve.protocol.batches import BATCH_ENDPOINTS, BatchCreateRequest
from gemmaserve.store.batches import StoreBatches

log = logging.getLogger("gemmaserve.api")
router = APIRouter()

BACKGROUND = 1  # scheduler priority of batch items (0 = interactive)
_FINAL = ("completed", "failed", "cancelled")
_ATTRIBUTION = ("http-referer", "x-title", "x-openrouter-title", "user-agent")  # never credentials


class BatchRepository(Protocol):
    """Where batches outlive the process: `create` once, `update` the header (status, counts, cost)
    and `add_result` per finished item as they change, `load` everything once at start."""

    def create(self, batch: dict[str, Any]) -> None: ...

    def update(self, batch: dict[str, Any]) -> None: ...

    def add_result(self, batch_id: str, result: dict[str, Any]) -> None: ...

    def load(self) -> list[dict[str, Any]]: ...


class MemoryBatches:
    """No durability: batches live as long as the process."""

    def create(self, batch: dict[str, Any]) -> None:
        return None

    def update(self, batch: dict[str, Any]) -> None:
        return None

    def add_result(self, batch_id: str, result: dict[str, Any]) -> None:
        return None

    def load(self) -> list[dict[str, Any]]:
        return []


def repository(state: ServerState) -> BatchRepository | None:
    """The repository given on the state, else the durable store's when the server has one."""
    if state.batch_repo is not None:
        return state.batch_repo
    if state.store is None:
        return None
    return StoreBatches(state.store)


def view(b: dict[str, Any], results: bool = True) -> dict[str, Any]:
    """The batch object clients see (results inline, in input order, as items finish)."""
    out = {k: b[k] for k in ("id", "object", "endpoint", "model", "completion_window", "status", "created_at",
                             "in_progress_at", "finalized_at", "cancelled_at", "request_counts", "cost", "error",
                             "metadata")}
    if results:
        out["results"] = [b["results"][i["custom_id"]] for i in b["items"] if i["custom_id"] in b["results"]]
    return out


def _result(custom_id: str, resp: httpx.Response) -> dict[str, Any]:
    try:
        body: Any = resp.json()
    except ValueError:
        body = {"error": {"code": resp.status_code, "message": resp.text[:500]}}
    error = None
    if resp.status_code >= 400:
        err = body.get("error") if isinstance(body, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        error = {"code": resp.status_code, "message": message or f"HTTP {resp.status_code}"}
    return {"custom_id": custom_id, "response": {"status_code": resp.status_code, "body": body}, "error": error}


def _cost(result: dict[str, Any]) -> float:
    body = result["response"]["body"] if result["response"] else None
    usage = body.get("usage") if isinstance(body, dict) else None
    cost = usage.get("cost") if isinstance(usage, dict) else None
    return float(cost) if isinstance(cost, (int, float)) else 0.0


class BatchRunner:
    """Owns every batch of one app: creation, the background tasks that run them, cancel, resume."""

    def __init__(self, app: FastAPI, state: ServerState, repo: BatchRepository | None = None):
        self.app, self.state = app, state
        self.repo: BatchRepository = repo or MemoryBatches()
        self.batches: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self._slots: asyncio.Semaphore | None = None  # created in the serving loop

    # -- lifecycle ------------------------------------------------------------------------------
    def resume(self) -> None:
        """Load saved batches; unfinished ones continue with the items that have no result yet."""
        for b in self.repo.load():
            self.batches[b["id"]] = b
            if b["status"] not in _FINAL:
                self._start(b)

    async def shutdown(self) -> None:
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- requests -------------------------------------------------------------------------------
    def create(self, req: BatchCreateRequest, key_hash: str | None, headers: Any) -> dict[str, Any]:
        cfg = self.state.config
        if len(req.requests) > cfg.batch_max_requests:
            raise APIError(400, f"Invalid value for 'requests': at most {cfg.batch_max_requests} requests per "
                           f"batch, got {len(req.requests)}", "invalid_request", {"param": "requests"})
        now = int(time.time())
        b = {
            "id": f"batch_{random_alnum(24)}", "object": "batch", "endpoint": req.endpoint, "model": req.model,
            "completion_window": req.completion_window, "status": "validating", "created_at": now,
            "in_progress_at": None, "finalized_at": None, "cancelled_at": None,
            "request_counts": {"total": len(req.requests), "completed": 0, "failed": 0}, "cost": 0.0,
            "error": None, "metadata": req.metadata, "key_hash": key_hash,
            "headers": {h: headers[h] for h in _ATTRIBUTION if h in headers},
            "items": [i.model_dump() for i in req.requests], "results": {},
        }
        self.batches[b["id"]] = b
        self.repo.create(b)
        self._start(b)
        return b

    def get(self, batch_id: str, key_hash: str | None) -> dict[str, Any]:
        b = self.batches.get(batch_id)
        if b is None or b["key_hash"] != key_hash:  # another key's batch does not exist for this one
            raise APIError(404, f"Batch {batch_id} not found", "not_found")
        return b

    async def cancel(self, batch_id: str, key_hash: str | None) -> dict[str, Any]:
        b = self.get(batch_id, key_hash)
        if b["status"] in _FINAL:
            return b
        b["status"] = "cancelling"
        task = self.tasks.get(batch_id)
        if task is not None:
            task.cancel()  # in-flight items are aborted; their engine requests free their blocks
            await asyncio.gather(task, return_exceptions=True)
        self._finalize(b, "cancelled")
        return b

    # -- running --------------------------------------------------------------------------------
    def _start(self, b: dict[str, Any]) -> None:
        self.tasks[b["id"]] = asyncio.get_running_loop().create_task(self._run(b))

    def _finalize(self, b: dict[str, Any], status: str) -> None:
        now = int(time.time())
        b["status"], b["finalized_at"] = status, now
        if status == "cancelled":
            b["cancelled_at"] = now
        self.tasks.pop(b["id"], None)
        self.repo.update(b)

    async def _run(self, b: dict[str, Any]) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.state.config.batch_concurrency)
        while not self.state.ready and self.state.load_error is None:
            await asyncio.sleep(0.2)  # resumed at start-up: items wait for the model
        b["status"], b["in_progress_at"] = "in_progress", b["in_progress_at"] or int(time.time())
        self.repo.update(b)
        mark = BatchMark(b["key_hash"], BACKGROUND, self.state.config.batch_price_factor)

        async def marked(scope, receive, send):  # the ASGI app, with the item's BatchMark in its scope
            await self.app({**scope, BATCH_SCOPE: mark}, receive, send)

        path = BATCH_ENDPOINTS[b["endpoint"]]
        transport = httpx.ASGITransport(app=marked)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://batch", timeout=None) as client:
                todo = [i for i in b["items"] if i["custom_id"] not in b["results"]]
                await asyncio.gather(*(self._one(client, b, path, item) for item in todo))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not an item's fault: the batch fails, what finished stays
            log.exception("batch %s failed", b["id"])
            b["error"] = {"code": 500, "message": f"{type(exc).__name__}"}
            self._finalize(b, "failed")
            return
        self._finalize(b, "completed")

    async def _one(self, client: httpx.AsyncClient, b: dict[str, Any], path: str, item: dict[str, Any]) -> None:
        assert self._slots is not None
        body = dict(item["body"])
        body["stream"] = False  # results are whole bodies
        if b["model"] is not None:
            body.setdefault("model", b["model"])
        async with self._slots:
            resp = await client.post(path, json=body, headers=b["headers"])
        result = _result(item["custom_id"], resp)
        b["results"][item["custom_id"]] = result
        b["request_counts"]["failed" if result["error"] else "completed"] += 1
        b["cost"] += _cost(result)
        self.repo.add_result(b["id"], result)
        self.repo.update(b)


def _runner(request: Request) -> BatchRunner:
    return request.app.state.batches


@router.post("/api/beta/batches", dependencies=[Depends(require_auth)], status_code=202)
@router.post("/api/v1/batches", dependencies=[Depends(require_auth)], status_code=202)
async def create_batch(req: BatchCreateRequest, request: Request):
    b = _runner(request).create(req, getattr(request.state, "key_hash", None), request.headers)
    return JSONResponse(view(b, results=False), status_code=202)


@router.get("/api/beta/batches", dependencies=[Depends(require_auth)])
@router.get("/api/v1/batches", dependencies=[Depends(require_auth)])
async def list_batches(request: Request):
    key = getattr(request.state, "key_hash", None)
    data = [view(b, results=False) for b in _runner(request).batches.values() if b["key_hash"] == key]
    return {"object": "list", "data": sorted(data, key=lambda b: -b["created_at"])}


@router.get("/api/beta/batches/{batch_id}", dependencies=[Depends(require_auth)])
@router.get("/api/v1/batches/{batch_id}", dependencies=[Depends(require_auth)])
async def get_batch(batch_id: str, request: Request):
    return view(_runner(request).get(batch_id, getattr(request.state, "key_hash", None)))


@router.post("/api/beta/batches/{batch_id}/cancel", dependencies=[Depends(require_auth)])
@router.post("/api/v1/batches/{batch_id}/cancel", dependencies=[Depends(require_auth)])
async def cancel_batch(batch_id: str, request: Request):
    return view(await _runner(request).cancel(batch_id, getattr(request.state, "key_hash", None)))
