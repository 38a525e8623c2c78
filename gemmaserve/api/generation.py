"""The one generation skeleton every endpoint plugs into: an SSE stream and a whole response.

A request's journey: the route validates the wire type and runs `require_auth`; `admit()`
(admission.py) checks model, provider and readiness; the endpoint prepares prompt ids and
SamplingParams (in the preparation pool, off the event loop); it builds a `Generation` and its `Responder`, and returns
`await respond(gen, responder, stream=...)`. Everything after that lives here, once: the ledger's
open/close on every exit path, the engine run and its abort, the status decided by the first
output, keep-alives while waiting, in-band errors, finish frames, usage, the terminator, and
noticing a client that left.

How to add an endpoint family (Responses, Anthropic Messages, a batch worker...):

1. Parse the request into a pydantic type (protocol/; base it on body_checks.CheckedBody),
   `admit()` it, prepare prompt ids and SamplingParams in the bounded pool
   (`await state.preparation.run(prepare_chat, state, chat)`: chat_prep.py does it for
   chat-shaped input; reuse it from a translator).
2. Subclass `Responder` and write only the translation:
   - `frames(out)`: the bytes for one engine output (use `sse.sse_data` or `sse.sse_event` for
     `event:`-typed frames); `start()` for frames before the first output (e.g. Anthropic's
     `message_start`); `finish_frames(last, finish)` at a normal end; `error_frames(err)` for an
     in-band error; `usage_frames(usage)` for the closing usage; `keepalive` and `done` (None when
     the format has no `[DONE]`).
   - `body(last, finish, usage)`: the whole response; `complete(last)` runs before it (parse the
     whole text once).
   - A format with its own error envelope (Anthropic's `{"type": "error", "error": {...}}`)
     registers it once for its paths with `errors.register_error_envelope`; every error status
     (validation, auth, admission, engine refusal, whole-path failures) then uses it.
   - `finish_reasons(last)` and `counts(last)` when the defaults (no tool calls, no reasoning
     count) do not fit.
3. A batch or cache that needs no HTTP response calls `generate_whole(gen, responder)` and gets the
   body dict; a cache hit can replay a stored body without the engine.

Accounting is state.ledger (accounting.py): `open` before the engine sees the request, `close`
exactly once whatever happens; a durable store swaps the ledger and touches nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Mapping, NamedTuple

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from gemmaserve.api.accounting import Outcome
from gemmaserve.api.admission import BATCH_SCOPE, Admission, BatchMark
from gemmaserve.api.engine_run import TIMEOUT, EngineRun, run_to_end
from gemmaserve.api.errors import APIError, engine_error_to_api, error_response
from gemmaserve.api.response_cache import CacheSlot, open_slot
from gemmaserve.api.sse import DONE, KEEPALIVE, SSEResponse
from gemmaserve.api.state import ServerState
from gemmaserve.api.usage import TokenCounts
from gemmaserve.types import EngineError, FinishReason, MediaInput, RequestOutput, SamplingParams

log = logging.getLogger("gemmaserve.api")

_ALNUM = string.ascii_letters + string.digits

# A stream's status line waits at most this long for the engine's first answer: long enough for
# errors raised at submission (queue full, prompt too long) to get their own status, short enough
# that a queued client soon sees headers and keep-alive comments.
FIRST_WAIT_S = 1.0


def random_alnum(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def new_generation_id(created: int) -> str:
    # OpenRouter's shape: gen-<unix seconds>-<20 alnum> (spec §3.1).
    return f"gen-{created}-{random_alnum(20)}"


class Finish(NamedTuple):
    reason: str | None  # OpenRouter's normalised set: stop | length | tool_calls | error
    native: str | None  # the engine's own reason


def finish_of(out: RequestOutput | None, has_tool_calls: bool = False) -> Finish:
    """Map FinishReason onto OpenRouter's normalised set; a stop that produced tool calls is
    `tool_calls` in both fields."""
    if out is None or out.finish_reason is None:
        return Finish(None, None)
    if out.finish_reason == FinishReason.ERROR:
        return Finish("error", out.finish_reason.value)
    if out.finish_reason == FinishReason.LENGTH:
        return Finish("length", out.finish_reason.value)
    if has_tool_calls:
        return Finish("tool_calls", "tool_calls" if out.finish_reason == FinishReason.STOP else out.finish_reason.value)
    return Finish("stop", out.finish_reason.value)


@dataclass
class Generation:
    """One admitted request on its way through the engine: what it runs and how it is named."""

    admission: Admission
    endpoint: str  # the record's api_type
    prompt_ids: list[int]
    params: SamplingParams
    user: str | None = None
    session_id: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    gen_id: str = ""
    usage: dict[str, Any] | None = None  # set once the ledger closed it
    run: EngineRun | None = None
    media: list[MediaInput] = field(default_factory=list)  # images/videos whose soft tokens prompt_ids hold
    price_factor: float = 1.0  # what the ledger bills of the list price (batches run at a discount)
    # The store's commit of this generation's record and charge (a concurrent Future), set by a
    # durable ledger's close; awaited before the response's last bytes (wait_durable).
    durable: Future | None = None

    def __post_init__(self) -> None:
        if not self.gen_id:
            self.gen_id = new_generation_id(self.created)

    @property
    def state(self) -> ServerState:
        return self.admission.state

    @property
    def model(self) -> str:
        return self.admission.model

    @property
    def headers(self) -> Mapping[str, str]:
        return self.admission.headers

    @property
    def closed(self) -> bool:
        return self.usage is not None

    async def wait_durable(self) -> None:
        """Return once the ledger's record is committed, so a client holding the whole answer holds
        a billed, durable generation; a failed write is logged, never turned into a failed answer."""
        if self.durable is not None:
            try:
                await asyncio.wrap_future(self.durable)
            except Exception:
                log.exception("generation %s: the store did not commit its record", self.gen_id)

    def close(self, responder: "Responder", finish: Finish, *, streamed: bool, cancelled: bool,
              error: APIError | None = None) -> dict[str, Any]:
        """Hand the outcome to the ledger, once; later calls return the first usage."""
        if self.usage is None:
            last = self.run.last if self.run is not None else None
            outcome = Outcome(finish.reason, finish.native, streamed, cancelled, responder.counts(last),
                              started=last is not None, error=error)
            self.usage = self.state.ledger.close(self, self.run, outcome)
        return self.usage


class Responder:
    """One endpoint's wire format over the skeleton. Subclasses override what their format needs;
    every method is called at most once per output, from the request's own task."""

    keepalive: bytes = KEEPALIVE
    done: bytes | None = DONE

    def __init__(self, gen: Generation) -> None:
        self.gen = gen

    # -- both paths ------------------------------------------------------------------------------
    def counts(self, last: RequestOutput | None) -> TokenCounts:
        return TokenCounts(len(self.gen.prompt_ids), len(last.token_ids) if last else 0,
                           last.num_cached_tokens if last else 0)

    def finish_reasons(self, last: RequestOutput | None) -> Finish:
        return finish_of(last)

    # -- stream ----------------------------------------------------------------------------------
    def start(self) -> Iterable[bytes]:
        return ()

    def frames(self, out: RequestOutput) -> Iterable[bytes]:
        raise NotImplementedError

    def finish_frames(self, last: RequestOutput | None, finish: Finish) -> Iterable[bytes]:
        return ()

    def error_frames(self, err: APIError) -> Iterable[bytes]:
        raise NotImplementedError

    def usage_frames(self, usage: dict[str, Any]) -> Iterable[bytes]:
        return ()

    # -- whole -----------------------------------------------------------------------------------
    def complete(self, last: RequestOutput | None) -> None:
        """Called once before finish_reasons/body on the whole path (parse the full text here)."""

    def body(self, last: RequestOutput | None, finish: Finish, usage: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class InBandError(Exception):
    """A request the engine finished with FinishReason.ERROR, reported in the stream."""


async def respond(request: Request, gen: Generation, responder: Responder, *, stream: bool) -> Response:
    """Run `gen` and answer in `responder`'s format: a JSON body (cancelled if the client leaves), or
    an SSE stream whose status waits for the first output (or FIRST_WAIT_S), so errors raised at
    submission still get their own status."""
    state = gen.state
    assert state.engine is not None
    mark: BatchMark | None = request.scope.get(BATCH_SCOPE)
    if mark is not None:  # a batch item: background priority, discounted price
        gen.params.priority, gen.price_factor = mark.priority, mark.price_factor
    slot = await open_slot(request, gen, stream)
    if slot is not None and (hit := slot.lookup()) is not None:
        return slot.replay(hit, gen.gen_id, stream)  # no engine, no ledger: a hit is not billed
    state.ledger.open(gen)
    try:
        gen.run = EngineRun(state.engine, gen.prompt_ids, gen.params, gen.gen_id, gen.media)
        if not stream:
            return await unless_disconnected(request, _whole_response(request, gen, responder, slot))
        try:
            first = await gen.run.next(timeout=min(state.config.keepalive_interval_s, FIRST_WAIT_S))
        except EngineError as exc:
            err = engine_error_to_api(exc)
            await gen.run.close()
            gen.close(responder, Finish("error", "error"), streamed=True, cancelled=False, error=err)
            raise err from None
    except BaseException as exc:
        # Anything else that escapes before the stream owns the run: abort it, close the ledger.
        if gen.run is not None:
            await gen.run.close()
        if not gen.closed:
            cancelled = isinstance(exc, asyncio.CancelledError)
            err = None if cancelled else exc if isinstance(exc, APIError) else APIError(500, "Internal Server Error")
            gen.close(responder, Finish(None, None) if cancelled else Finish("error", "error"),
                      streamed=stream, cancelled=cancelled, error=err)
        raise
    frames = _stream(gen, responder, first)
    headers = {"X-Generation-Id": gen.gen_id}
    if slot is not None:
        frames = slot.captured(frames, gen, responder.keepalive)
        headers.update(slot.miss_headers())
    return SSEResponse(frames, headers=headers)


async def generate_whole(gen: Generation, responder: Responder) -> dict[str, Any]:
    """The whole response body for `gen` (no HTTP: batches call this). The run is closed and the
    ledger closed on every path; an engine error is raised as its APIError."""
    if gen.run is None:
        assert gen.state.engine is not None
        gen.state.ledger.open(gen)
        gen.run = EngineRun(gen.state.engine, gen.prompt_ids, gen.params, gen.gen_id, gen.media)
    run = gen.run
    try:
        try:
            await run_to_end(run)
        except EngineError as exc:
            err = engine_error_to_api(exc)
            gen.close(responder, Finish("error", "error"), streamed=False, cancelled=False, error=err)
            raise err from None
        except asyncio.CancelledError:  # the client left: the request is aborted below
            gen.close(responder, Finish(None, None), streamed=False, cancelled=True)
            raise
        last = run.last
        responder.complete(last)
        finish = responder.finish_reasons(last)
        usage = gen.close(responder, finish, streamed=False, cancelled=False)
        await gen.wait_durable()
        return responder.body(last, finish, usage)
    finally:
        await run.close()


async def _whole_response(request: Request, gen: Generation, responder: Responder,
                          slot: CacheSlot | None = None) -> Response:
    try:
        body = await generate_whole(gen, responder)
    except APIError as err:
        return error_response(err, request)
    headers = {"X-Generation-Id": gen.gen_id}
    if slot is not None:
        slot.keep_body(body, gen)
        headers.update(slot.miss_headers())
    return JSONResponse(body, headers=headers)


async def _stream(gen: Generation, r: Responder, out: Any) -> AsyncIterator[bytes]:
    run = gen.run
    assert run is not None
    interval = gen.state.config.keepalive_interval_s
    finish = Finish(None, None)
    try:
        for frame in r.start():
            yield frame
        error = None
        try:
            while out is not None:
                if out is TIMEOUT:
                    yield r.keepalive
                else:
                    for frame in r.frames(out):
                        yield frame
                    if out.finished:
                        break
                # Keep-alives only until the first token; after it, tokens are the heartbeat.
                out = await run.next(timeout=interval if run.t_first is None else None)
            last = run.last
            if last is not None and last.finish_reason == FinishReason.ERROR:
                raise InBandError(last.error or "generation failed")
            reasons = r.finish_reasons(last)
            finish = Finish(reasons.reason or "stop", reasons.native or "stop")
            for frame in r.finish_frames(last, finish):
                yield frame
        except (EngineError, InBandError) as exc:
            finish = Finish("error", "error")
            error = engine_error_to_api(exc) if isinstance(exc, EngineError) else APIError(500, str(exc), "server")
            for frame in r.error_frames(error):
                yield frame
        usage = gen.close(r, finish, streamed=True, cancelled=False, error=error)
        await gen.wait_durable()
        for frame in r.usage_frames(usage):
            yield frame
        if r.done is not None:
            yield r.done
    finally:
        await run.close()
        gen.close(r, finish, streamed=True, cancelled=True)  # no-op unless the client left first


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
