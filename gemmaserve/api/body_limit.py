"""ASGI middleware that refuses bodies over a size limit before any JSON parsing (413)."""

from __future__ import annotations

import json

from gemmaserve.api.errors import APIError, enveloped


class BodySizeLimit:
    """Buffers the request body up to `max_bytes` and answers 413 past it; later `receive` calls
    (e.g. http.disconnect while streaming) go straight to the server."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    await self._reject(scope, send)
                    return
            except ValueError:
                pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # Client left before sending the whole body: nothing to answer.
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, send)
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

    async def _reject(self, scope, send) -> None:
        err = APIError(413, f"Request body exceeds the limit of {self.max_bytes} bytes", "payload_too_large")
        # Starlette puts the app in the scope: its paths' own envelopes (Anthropic's) apply here too.
        payload = json.dumps(enveloped(err, scope.get("app"), scope.get("path", ""))).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": payload})
