"""ASGI middleware bounding what one request may take before the app sees it: the body's size (413)
and the time it takes to arrive (408), and how many requests run at once (503)."""

from __future__ import annotations

import asyncio
import json
import time

from gemmaserve.api.errors import APIError, enveloped


async def send_error(scope, send, err: APIError, *, close: bool = True) -> None:
    """A whole JSON error response written straight to the ASGI `send`, in the envelope of the
    request's path (Starlette puts the app in the scope: Anthropic's paths get Anthropic's)."""
    payload = json.dumps(enveloped(err, scope.get("app"), scope.get("path", ""))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimit:
    """Buffers the request body up to `max_bytes` and answers 413 past it, or 408 when the whole
    body has not arrived `timeout_s` after the headers (a client trickling a byte a second would
    otherwise hold its connection and buffer forever); later `receive` calls (http.disconnect
    while streaming) go straight to the server."""

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    await self._too_large(scope, send)
                    return
            except ValueError:
                pass
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        chunks, size = [], 0
        while True:
            try:
                if deadline is None:
                    message = await receive()
                else:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                await send_error(scope, send, APIError(408, f"The request body did not arrive within {self.timeout_s:g} s",
                                                "request_timeout"))
                return
            if message["type"] != "http.request":
                # Client left before sending the whole body: nothing to answer.
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, send) -> None:
        await send_error(scope, send, APIError(413, f"Request body exceeds the limit of {self.max_bytes} bytes",
                                        "payload_too_large"))


class ConcurrencyLimit:
    """At most `limit` requests in the app at once (streams count until they end); the next one
    gets a JSON 503 with Retry-After at once, so an overload burst cannot buffer bodies and queue
    work without bound. /health stays answerable."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit
        self.active = 0  # event-loop thread only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") == "/health":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await send_error(scope, send, APIError(503, "The server is at its concurrent request limit; retry shortly.",
                                            "provider_overloaded", headers={"Retry-After": "1"}), close=False)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
