"""AsyncEngine: the EngineClient the API uses; drives Engine.step() in a background thread."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import AsyncIterator, Callable

from gemmaserve.config import EngineConfig
from gemmaserve.engine.client import EngineStats
from gemmaserve.engine.engine import Engine
from gemmaserve.engine.request import Request
from gemmaserve.types import (
    EngineDeadError,
    InvalidRequestError,
    MediaInput,
    QueueFullError,
    RequestOutput,
    SamplingParams,
)

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.5  # the loop sleeps on an event; this only bounds a missed wake-up


class _Sink:
    """Where one request's outputs go: an asyncio queue owned by the caller's event loop."""

    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def put(self, item: RequestOutput | BaseException) -> None:
        _hand_over(self.loop, [(self.queue, item)])


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    for q, item in items:
        q.put_nowait(item)


def _hand_over(loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Queue, object]]) -> None:
    """One wake-up of `loop` for all of a step's items (not one per request): each
    call_soon_threadsafe writes the loop's self-pipe and takes the GIL away from the model."""
    try:
        loop.call_soon_threadsafe(_put_all, items)
    except RuntimeError:  # the caller's loop is closed: nobody is listening any more
        pass


class AsyncEngine:
    """Implements gemmaserve.engine.client.EngineClient.

    Only the loop thread touches the Engine's mutable state. Callers validate and build their
    Request in their own thread (Engine.make_request reads configuration only), then hand it over
    through a command queue; outputs come back through per-request asyncio queues fed with
    loop.call_soon_threadsafe. torch releases the GIL in its kernels, so the event loop stays
    responsive while a step runs.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        max_waiting: int | None = None,
        *,
        factory: Callable[[], Engine] | None = None,
    ):
        """Wrap a built `engine`, or build one with `factory()` inside the loop thread (blocking
        until it is built; its exception propagates)."""
        if (engine is None) == (factory is None):
            raise ValueError("give exactly one of engine or factory")
        self._max_waiting_arg = max_waiting
        self._commands: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards _sinks and _pending_adds
        self._sinks: dict[str, _Sink] = {}
        self._pending_adds = 0
        self._dead: BaseException | None = None
        self._stopping = False
        self._booted = threading.Event()
        self._boot_error: BaseException | None = None
        if engine is not None:
            self._attach(engine)
        self._thread = threading.Thread(target=self._run, args=(factory,), name="gemmaserve-engine", daemon=True)
        self._thread.start()
        self._booted.wait()
        if self._boot_error is not None:
            self._thread.join()
            raise self._boot_error

    def _attach(self, engine: Engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_config = engine.model_config
        self.max_model_len: int = engine.max_model_len
        self.vocab_size: int = engine.vocab_size
        self.takes_media: bool = engine.vision is not None
        mw = self._max_waiting_arg
        self.max_waiting = engine.config.scheduler.max_waiting if mw is None else mw
        self._stats = engine.stats()

    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncEngine":
        """Load model and tokenizer (blocking: minutes for a real checkpoint) and start the loop.

        The load runs in the loop thread itself. On CPU torch's OpenMP runtime (libgomp) keeps a
        worker pool per thread that ever ran a parallel op; with a second live pool (say, the
        loader's executor thread) it manages more threads than cores and drops from spin-waiting
        to sleeping between ops, which cost ~15 ms per bench-model decode step (thread-pool A/B:
        45-51 vs 31-33 ms/step). One thread for load and steps keeps one pool."""
        return cls(factory=lambda: Engine.from_config(config))

    # -- EngineClient -----------------------------------------------------------------------
    async def generate(
        self, prompt_token_ids: list[int], params: SamplingParams, request_id: str,
        media: list[MediaInput] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        self._check_alive()
        req = self.engine.make_request(request_id, prompt_token_ids, params, media)
        sink = _Sink(asyncio.get_running_loop())
        with self._lock:
            if request_id in self._sinks:
                raise InvalidRequestError(f"request id {request_id!r} is already running")
            # len() of the scheduler's deque is an atomic read; the stats snapshot can be a step old.
            if len(self.engine.scheduler.waiting) + self._pending_adds >= self.max_waiting:
                raise QueueFullError(f"too many requests waiting ({self.max_waiting}); retry later")
            self._sinks[request_id] = sink
            self._pending_adds += 1
        self._send("add", req)
        finished = False
        try:
            while True:
                item = await sink.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                # Consumer gone (disconnect, cancel, error): drop the sink and free the blocks now.
                with self._lock:
                    self._sinks.pop(request_id, None)
                self._send("abort", request_id)

    async def abort(self, request_id: str) -> None:
        """Abort a request; a consumer still iterating receives a final ABORT output."""
        self._send("abort", request_id)

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def is_ready(self) -> bool:
        return self._thread.is_alive() and self._dead is None and not self._stopping

    async def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join, 30.0)
        self._fail_all(EngineDeadError("the engine was shut down"))

    # -- loop thread ------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine loop died: {self._dead!r}")
        if self._stopping:
            raise EngineDeadError("the engine is shutting down")

    def _send(self, kind: str, payload: object) -> None:
        self._commands.put((kind, payload))
        self._wake.set()

    def _run(self, factory: Callable[[], Engine] | None) -> None:
        if factory is not None:
            try:
                self._attach(factory())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the constructor's thread
                self._boot_error = exc
                self._booted.set()
                return
        self._booted.set()
        try:
            while not self._stopping:
                self._drain_commands()
                if not self.engine.has_unfinished_requests():
                    self._wake.wait(_IDLE_POLL_S)
                    self._wake.clear()  # commands sent after this are drained next iteration
                    continue
                outputs = self.engine.step()
                self._stats = self.engine.stats()
                self._deliver_all(outputs)
            self._drain_commands()
        except BaseException as exc:  # noqa: BLE001 - report to every waiter, then stop
            log.exception("engine loop died")
            self._dead = exc
            self._fail_all(EngineDeadError(f"the engine loop died: {exc!r}"))
        finally:
            # Whatever is left (shutdown or crash) releases its blocks.
            try:
                for rid in list(self.engine.scheduler.requests):
                    self.engine.abort(rid)
                self._stats = self.engine.stats()
            except Exception:  # noqa: BLE001 - already dying; keep the first error
                log.exception("could not release requests after the loop stopped")

    def _drain_commands(self) -> None:
        changed = False
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                break
            changed = True
            if kind == "add":
                assert isinstance(payload, Request)
                with self._lock:
                    self._pending_adds -= 1
                    wanted = payload.request_id in self._sinks
                if wanted:  # not already abandoned by its consumer
                    self.engine.add(payload)
            elif kind == "abort":
                out = self.engine.abort(str(payload))
                if out is not None:
                    self._deliver(out)
        if changed:
            self._stats = self.engine.stats()

    def _deliver(self, out: RequestOutput) -> None:
        self._deliver_all([out])

    def _deliver_all(self, outputs: list[RequestOutput]) -> None:
        """Route a step's outputs with one lock and one wake-up per event loop."""
        if not outputs:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        with self._lock:
            for out in outputs:
                rid = out.request_id
                sink = self._sinks.pop(rid, None) if out.finished else self._sinks.get(rid)
                if sink is not None:
                    by_loop.setdefault(sink.loop, []).append((sink.queue, out))
        for loop, items in by_loop.items():
            _hand_over(loop, items)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink.put(exc)
