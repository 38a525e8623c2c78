"""Request preparation off the event loop: rendering, tokenizing and grammar compilation run in a
bounded pool of worker threads with a time limit, so no request's CPU work stalls the streams
(the loop keeps sending tokens) or queues without end behind hostile ones."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Callable, TypeVar

from gemmaserve.api.errors import APIError

T = TypeVar("T")
log = logging.getLogger("gemmaserve.api")


class PreparationPool:
    """`workers` threads, at most `queue` more requests waiting for one; beyond that a request is
    refused at once with a 503 (the server is busy, not the request wrong). A preparation that runs
    past `time_limit_s` is answered with a 400: Python cannot stop the thread, so it finishes in the
    background and keeps its slot until then, which is what bounds the damage a stream of hostile
    bodies can do. The tokenizer and llguidance release the GIL while they work."""

    def __init__(self, workers: int, queue: int, time_limit_s: float) -> None:
        if workers < 1 or queue < 0 or time_limit_s <= 0:
            raise ValueError("preparation pool needs workers >= 1, queue >= 0, time_limit_s > 0")
        self.workers, self.queue, self.time_limit_s = workers, queue, time_limit_s
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="gs-prepare")
        self.in_flight = 0  # submitted and not finished (running or waiting); event-loop thread only

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.in_flight >= self.workers + self.queue:
            raise APIError(503, "The server is busy preparing other requests; retry shortly.",
                           "provider_overloaded", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        self.in_flight += 1
        future = loop.run_in_executor(self._executor, fn, *args)
        future.add_done_callback(self._release)
        try:
            # shield: a timeout or a client gone stops our wait, not the thread (it cannot be stopped).
            return await asyncio.wait_for(asyncio.shield(future), self.time_limit_s)
        except TimeoutError:
            future.add_done_callback(_swallow)
            raise APIError(400, f"Preparing this request (template, tokenizing, grammar) took longer than "
                           f"{self.time_limit_s:g} s; send a shorter prompt or smaller tools / schema.",
                           "invalid_request") from None
        except asyncio.CancelledError:
            future.add_done_callback(_swallow)
            raise
        except RecursionError:
            # Body checks bound nesting first; this is the net under them.
            raise APIError(400, "The request nests too deeply to prepare.", "invalid_request") from None
        except BaseException as exc:
            # A Rust panic (pyo3's PanicException derives from BaseException) carries a backtrace
            # in its text: the client gets a plain sentence, the log the details.
            if type(exc).__name__ != "PanicException":
                raise
            log.warning("preparation panicked: %s", str(exc).splitlines()[0][:200])
            raise APIError(400, "The request could not be prepared: the tokenizer or grammar engine rejected it.",
                           "invalid_request") from None

    def _release(self, _: Any) -> None:
        self.in_flight -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _swallow(future: asyncio.Future) -> None:
    """Retrieve an abandoned preparation's exception so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
