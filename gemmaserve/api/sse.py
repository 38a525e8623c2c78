"""Server-sent events framing, and a streaming response that always notices a client leaving."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import anyio
from starlette.responses import StreamingResponse

KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"


def sse_data(obj: dict[str, Any]) -> bytes:
    # Compact JSON on one line: a `data:` field must not contain a raw newline.
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"


def sse_event(obj: dict[str, Any]) -> bytes:
    """An `event:`-typed frame (Responses, Anthropic Messages): the event name is the object's type."""
    return f"event: {obj['type']}\n".encode("utf-8") + sse_data(obj)


class SSEResponse(StreamingResponse):
    """text/event-stream whose body generator is closed on every exit.

    Starlette only watches for http.disconnect on ASGI < 2.4 and otherwise learns of a gone client
    when a send fails - which, during a long prefill, could be a whole keep-alive interval later.
    Here the listener always runs, and the body iterator is closed (shielded) so its cleanup - the
    engine abort that frees KV blocks - runs at once."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], headers: dict[str, str] | None = None):
        base = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, status_code=200, headers={**base, **(headers or {})})

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:
                    pass  # the client went away mid-send; cleanup already ran in stream_response
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()
