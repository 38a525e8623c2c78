"""The HTTP server the API runs under: uvicorn on its h11 protocol, with a deadline for a
request's headers, a cap on open connections, JSON bodies for malformed requests, and a lingering
close so an error answer reaches the client instead of a connection reset."""

from __future__ import annotations

import asyncio
import json
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gemmaserve.config import ServerConfig

# After an error answer the connection is half-closed and what the client still sends is read and
# dropped for this long: closing a socket with unread data makes the kernel send a reset, which
# can destroy the answer before the client reads it (a 1 MB header line got a reset, not a 400).
LINGER_S = 2.0
# h11 refuses a request head (request line + headers) past this size (its default is 16 KiB).
MAX_HEAD_BYTES = 64 * 1024


def connection_cap(configured: int) -> int:
    """`configured`, lowered to leave the process file descriptors for everything else (model
    files, the engine, logs): past the descriptor limit accept() fails for everyone, which is
    the exhaustion the cap exists to prevent."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - 128))


def guarded_protocol(cfg: ServerConfig) -> type[H11Protocol]:
    """uvicorn's H11Protocol held to `cfg`'s limits (uvicorn builds one per connection)."""

    class GuardedH11Protocol(H11Protocol):
        header_timeout_s = cfg.header_timeout_s
        max_connections = connection_cap(cfg.max_connections)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._head_timer: asyncio.TimerHandle | None = None
            self._draining = False
            super().connection_made(transport)
            if len(self.connections) > self.max_connections:
                # Refused before reading anything: the cheapest answer to a connection flood.
                self.transport.close()
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._draining:
                return
            waiting = self._waiting_for_head()
            if waiting and self._head_timer is None:
                self._arm_head_timer()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if not self._waiting_for_head() and self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE and not self.conn.trailing_data[0]:
                    self.transport.close()  # an idle keep-alive connection: nothing was asked
                    return
                self._error_response(408, f"The request headers did not arrive within {self.header_timeout_s:g} s",
                                     "request_timeout")

        def send_400_response(self, msg: str) -> None:
            self._error_response(400, f"Invalid HTTP request: {msg.rstrip('.')} (malformed, or a request "
                                 f"line / headers over {MAX_HEAD_BYTES} bytes).", "invalid_request")

        def _error_response(self, status: int, message: str, error_type: str) -> None:
            """A JSON error written outside any request cycle, then a lingering close."""
            body = json.dumps({"error": {"code": status, "message": message,
                                         "metadata": {"error_type": error_type}}}).encode()
            head = (f"HTTP/1.1 {status} {'Bad Request' if status == 400 else 'Request Timeout'}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n")
            self.transport.write(head.encode() + body)
            self._linger()

        def _linger(self) -> None:
            self._draining = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    return GuardedH11Protocol


def uvicorn_config(app: Any, cfg: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000,
                   log_level: str = "info", **extra: Any) -> uvicorn.Config:
    """uvicorn settings for serving `app` under `cfg`'s limits."""
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=guarded_protocol(cfg),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        # Longer than any client pool's idle expiry (httpx 5 s, aiohttp 15 s), so the client, not
        # the server, ends an idle connection: a server closing it just as a request goes out on it
        # is the race that reset 2 of 5,000 requests under overload.
        timeout_keep_alive=cfg.keepalive_timeout_s,
        **extra,
    )
