"""One engine request seen from the HTTP side: timed iteration, keep-alive waits, sure abort."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio

from gemmaserve.engine.client import EngineClient
from gemmaserve.types import MediaInput, RequestOutput, SamplingParams

TIMEOUT = object()  # sentinel: nothing arrived within the wait


class EngineRun:
    """Wraps `engine.generate` so a caller can wait with a timeout without cancelling the engine's
    iterator (a cancelled __anext__ would abort the request), and so every exit path - finish,
    error, client gone - ends in exactly one abort of an unfinished request."""

    def __init__(self, engine: EngineClient, prompt_ids: list[int], params: SamplingParams, request_id: str,
                 media: list[MediaInput] | None = None):
        self.engine = engine
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        # Text-only requests call generate as before (engine doubles without a media argument work).
        self._it = (self.engine.generate(prompt_ids, params, request_id, media) if media
                    else self.engine.generate(prompt_ids, params, request_id))
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


async def run_to_end(run: EngineRun) -> None:
    """Consume outputs until the request finishes (run.last then holds the final one)."""
    out = await run.next()
    while out is not None and not out.finished:
        out = await run.next()
