"""One engine request seen from the HTTP side: timed iteration, keep-alive waits, sure abort."""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from gemmaserve.api.state import ServerState
from gemmaserve.api.usage import TokenCounts, usage_object
from gemmaserve.types import FinishReason, RequestOutput, SamplingParams

_ALNUM = string.ascii_letters + string.digits

TIMEOUT = object()  # sentinel: nothing arrived within the wait


def random_alnum(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def new_generation_id(created: int) -> str:
    # OpenRouter's shape: gen-<unix seconds>-<20 alnum> (spec §3.1).
    return f"gen-{created}-{random_alnum(20)}"


def new_tool_call_id() -> str:
    return f"call_{random_alnum(24)}"


class EngineRun:
    """Wraps `engine.generate` so a caller can wait with a timeout without cancelling the engine's
    iterator (a cancelled __anext__ would abort the request), and so every exit path - finish,
    error, client gone - ends in exactly one abort of an unfinished request."""

    def __init__(self, state: ServerState, prompt_ids: list[int], params: SamplingParams, request_id: str):
        assert state.engine is not None
        self.engine = state.engine
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self._it = self.engine.generate(prompt_ids, params, request_id)
        self._pending: asyncio.Future | None = None
        self.finished = False
        self.last: RequestOutput | None = None
        self.t_start = time.monotonic()
        self.t_first: float | None = None
        self.t_last: float | None = None

    async def next(self, timeout: float | None = None) -> Any:
        """The next RequestOutput, None at the end, or TIMEOUT. Engine errors propagate."""
        if self.finished:
            return None
        try:
            if timeout is None and self._pending is None:
                # No deadline: await the iterator directly instead of a Task + asyncio.wait per
                # token (the loop's per-token Python competes with the model for the GIL). A
                # cancellation here (client gone) closes the iterator, which aborts the request.
                out = await self._it.__anext__()
            else:
                if self._pending is None:
                    self._pending = asyncio.ensure_future(self._it.__anext__())
                done, _ = await asyncio.wait({self._pending}, timeout=timeout)
                if not done:
                    return TIMEOUT
                task, self._pending = self._pending, None
                out = task.result()
        except StopAsyncIteration:
            self.finished = True
            return None
        except asyncio.CancelledError:
            raise  # not finished: close() still aborts the request
        except BaseException:
            self.finished = True
            raise
        now = time.monotonic()
        if out.new_token_ids:
            if self.t_first is None:
                self.t_first = now
            self.t_last = now
        self.last = out
        if out.finished:
            self.finished = True
        return out

    async def close(self) -> None:
        # Shielded: this runs while the surrounding task is being cancelled (client disconnect).
        with anyio.CancelScope(shield=True):
            if self._pending is not None:
                self._pending.cancel()
                try:
                    await self._pending
                except BaseException:
                    pass
                self._pending = None
            if not self.finished:
                self.finished = True
                try:
                    await self._it.aclose()
                except BaseException:
                    pass
                try:
                    await self.engine.abort(self.request_id)
                except Exception:
                    pass

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_start

    @property
    def tpot(self) -> float | None:
        n = len(self.last.token_ids) if self.last is not None else 0
        if self.t_first is None or self.t_last is None or n < 2:
            return None
        return (self.t_last - self.t_first) / (n - 1)


async def unless_disconnected(request: Request, coro) -> Any:
    """Await `coro` (a whole, non-streaming response), cancelling it if the client hangs up
    first: its cleanup then aborts the engine request instead of generating for nobody."""
    work = asyncio.ensure_future(coro)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        work.cancel()
        try:
            await work
        except BaseException:
            pass
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()


def record_generation(
    state: ServerState,
    *,
    gen_id: str,
    created: int,
    endpoint: str,
    run: EngineRun,
    counts: TokenCounts,
    finish_reason: str | None,
    native_finish_reason: str | None,
    streamed: bool,
    cancelled: bool,
    user: str | None,
    session_id: str | None,
    headers: Any,
    model: str | None = None,
) -> dict[str, Any]:
    """Store the /generation record (spec §8.1) and feed the token metrics; returns the usage."""
    cfg = state.config
    usage = usage_object(counts, cfg.prompt_price_per_m, cfg.completion_price_per_m)
    now = time.monotonic()
    latency_ms = int((now - run.t_start) * 1000)
    gen_ms = int((now - run.t_first) * 1000) if run.t_first is not None else 0
    state.metrics.observe_tokens(counts.prompt, counts.completion, run.ttft, run.tpot)
    state.generations.put(gen_id, {
        "id": gen_id,
        "upstream_id": run.request_id,
        "request_id": run.request_id,
        "total_cost": usage["cost"],
        "usage": usage["cost"],
        "cache_discount": None,
        "upstream_inference_cost": usage["cost"],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + "Z",
        "model": model or cfg.response_model,
        "app_id": None,
        "streamed": streamed,
        "cancelled": cancelled,
        "provider_name": cfg.provider_name,
        "latency": latency_ms,
        "generation_time": gen_ms,
        "moderation_latency": None,
        "finish_reason": finish_reason,
        "native_finish_reason": native_finish_reason,
        "tokens_prompt": counts.prompt,
        "tokens_completion": counts.completion,
        "native_tokens_prompt": counts.prompt,
        "native_tokens_completion": counts.completion,
        "native_tokens_completion_images": 0,
        "native_tokens_reasoning": counts.reasoning,
        "native_tokens_cached": counts.cached,
        "num_media_prompt": None,
        "num_input_audio_prompt": None,
        "num_media_completion": 0,
        "num_search_results": None,
        "num_fetches": None,
        "origin": headers.get("origin", "") if headers is not None else "",
        "http_referer": headers.get("http-referer") if headers is not None else None,
        "user_agent": headers.get("user-agent") if headers is not None else None,
        "external_user": user,
        "is_byok": False,
        "api_type": endpoint,
        "router": None,
        "preset_id": None,
        "session_id": session_id,
        "service_tier": None,
        "data_region": None,
        "workspace_id": None,
        "response_cache_source_id": None,
        "web_search_engine": None,
        "provider_responses": [],
    })
    return usage


def native_reason(out: RequestOutput | None) -> str | None:
    if out is None or out.finish_reason is None:
        return None
    return out.finish_reason.value


def normalised_reason(out: RequestOutput | None, has_tool_calls: bool) -> str | None:
    """Map FinishReason onto OpenRouter's normalised set (stop|length|tool_calls|error)."""
    if out is None or out.finish_reason is None:
        return None
    if out.finish_reason == FinishReason.ERROR:
        return "error"
    if out.finish_reason == FinishReason.LENGTH:
        return "length"
    return "tool_calls" if has_tool_calls else "stop"
