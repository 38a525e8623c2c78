"""The store's one writer thread: group commit of queued writes, off the event loop and the token path.

Every write is a function of a Session, queued with `submit`, which returns a Future that
resolves once the transaction holding it has committed. The thread takes whatever is queued
(up to `max_batch`) and commits it as one transaction, so under load many generations share
one commit and the commit rate stays flat while request rates grow; an idle server commits a
lone write at once (no timer: the window between a write being queued and being durable is
one transaction, typically a millisecond on SQLite). A batch that fails is retried one write
per transaction so one bad write cannot sink its neighbours."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("gemmaserve.store")

Write = Callable[[Session], Any]
_STOP = object()


class StoreWriter:
    """Invariant: every submitted Future is resolved (result or exception), also at close."""

    def __init__(self, sessions: sessionmaker, max_batch: int = 512):
        self._sessions = sessions
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gemmaserve-store-writer", daemon=True)
        self._closed = False
        self.commits = 0  # transactions committed; batching shows as commits < writes
        self.writes = 0
        self._thread.start()

    def submit(self, write: Write) -> Future:
        fut: Future = Future()
        if self._closed:
            fut.set_exception(RuntimeError("store is closed"))
            return fut
        self._queue.put((write, fut))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """Commit everything queued so far, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
                if stopping or len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[Write, Future]]) -> None:
        try:
            with self._sessions() as session, session.begin():
                results = [write(session) for write, _ in batch]
        except Exception:
            log.exception("store batch of %d failed; retrying one write at a time", len(batch))
            for write, fut in batch:
                try:
                    with self._sessions() as session, session.begin():
                        result = write(session)
                except Exception as exc:
                    log.exception("store write failed")
                    fut.set_exception(exc)
                else:
                    self.commits += 1
                    fut.set_result(result)
            self.writes += len(batch)
            return
        self.commits += 1
        self.writes += len(batch)
        for (_, fut), result in zip(batch, results):
            fut.set_result(result)
