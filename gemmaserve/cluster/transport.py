"""How the ingress reaches an endpoint: a replica through its Ray Serve deployment handle, an
upstream provider over HTTP. Both give the same Opened stream, and both turn a lost endpoint
(dead replica process, refused connection) into EndpointFailure."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

import httpx

from gemmaserve.cluster.endpoints import Endpoint

# Request headers an endpoint may see (never the caller's key: the ingress checked it).
FORWARDED_HEADERS = ("content-type", "accept", "user-agent", "http-referer", "referer", "x-title",
                     "x-openrouter-title", "x-session-id", "origin")


class EndpointFailure(Exception):
    """The endpoint could not answer: the replica died, the connection failed or broke."""


@dataclass
class Opened:
    """An answered attempt: status and headers, then the body's chunks. `close()` ends the
    attempt early (cancels the replica's generator / closes the HTTP response)."""

    status: int
    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


class Transport(Protocol):
    async def open(self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes) -> Opened: ...


class ReplicaTransport:
    """Calls `EngineReplica.forward` through a DeploymentHandle as a streaming call: Ray Serve
    queues and routes it among the deployment's replicas (more than one when autoscaled), and
    counts it for queue-depth autoscaling."""

    def __init__(self, handle: Any):
        self.handle = handle.options(stream=True)

    async def open(self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes) -> Opened:
        gen = self.handle.forward.remote(method, path, query, headers, body)

        async def close() -> None:
            gen.cancel()

        try:
            head = await gen.__anext__()
        except asyncio.CancelledError:
            gen.cancel()
            raise
        except StopAsyncIteration:
            raise EndpointFailure("the replica ended the response before its status") from None
        except Exception as exc:  # ActorDiedError, RayActorError, Serve's unavailability errors
            gen.cancel()
            raise EndpointFailure(f"{type(exc).__name__}: {exc}") from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in gen:
                    yield chunk
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise EndpointFailure(f"{type(exc).__name__}: {exc}") from None

        return Opened(int(head["status"]), [(k, v) for k, v in head["headers"]], chunks(), close)


def upstream_url(base_url: str, path: str) -> str:
    """`/api/v1/chat/completions` or `/v1/chat/completions` -> base_url + `/chat/completions`."""
    for prefix in ("/api/v1", "/v1"):
        if path.startswith(prefix + "/"):
            return base_url + path[len(prefix):]
    return base_url + path


class HttpTransport:
    """An upstream OpenAI/OpenRouter-compatible server (another gemmaserve, vLLM, llama.cpp,
    OpenRouter itself), called with the endpoint's own key."""

    def __init__(self, endpoint: Endpoint, client: httpx.AsyncClient):
        assert endpoint.base_url is not None
        self.endpoint = endpoint
        self.client = client

    async def open(self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes) -> Opened:
        out = [(k, v) for k, v in headers if k.lower() in FORWARDED_HEADERS]
        if self.endpoint.api_key:
            out.append(("authorization", f"Bearer {self.endpoint.api_key}"))
        url = upstream_url(self.endpoint.base_url or "", path) + (f"?{query}" if query else "")
        req = self.client.build_request(method, url, headers=out, content=body)
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise EndpointFailure(f"{type(exc).__name__}: {exc}") from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_bytes():
                    yield chunk
            except httpx.HTTPError as exc:
                raise EndpointFailure(f"{type(exc).__name__}: {exc}") from None
            finally:
                await resp.aclose()

        return Opened(resp.status_code, list(resp.headers.items()), chunks(), resp.aclose)
