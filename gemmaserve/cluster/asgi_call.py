"""Runs one HTTP request through an in-process ASGI app and streams its response: how a replica
answers a request the ingress hands it over Ray, with the replica's full gemmaserve API."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from starlette.types import ASGIApp, Message


async def asgi_stream(app: ASGIApp, method: str, path: str, query: str, headers: list[tuple[str, str]],
                      body: bytes) -> AsyncIterator[Any]:
    """Yields `{"status": int, "headers": [[name, value], ...]}` once, then the body in the chunks
    the app sends. Closing the iterator early (the ingress's client left) tells the app the client
    disconnected and cancels it, so the engine request is aborted and its KV blocks freed."""
    out: asyncio.Queue[Message | BaseException | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if gone.is_set():
            raise OSError("client disconnected")  # what a server does on a write to a closed socket
        await out.put(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"), "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("ingress", 0), "server": ("replica", 0),
    }

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:  # handed to the reader; a cancellation is ours
            if not isinstance(exc, asyncio.CancelledError):
                await out.put(exc)
        finally:
            await out.put(None)

    task = asyncio.create_task(run())
    try:
        while True:
            msg = await out.get()
            if msg is None:
                return
            if isinstance(msg, BaseException):
                raise msg
            if msg["type"] == "http.response.start":
                yield {"status": msg["status"],
                       "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in msg.get("headers", [])]}
            elif msg["type"] == "http.response.body":
                if msg.get("body"):
                    yield msg["body"]
                if not msg.get("more_body", False):
                    return
    finally:
        gone.set()
        if not task.done():
            # Give the app a moment to see the disconnect and abort cleanly, then cancel.
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=1.0)
            except BaseException:
                task.cancel()
