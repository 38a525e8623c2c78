"""One request through the cluster: try the planned endpoints in order until one answers, relay
its JSON or SSE, fail over while nothing of the answer was sent, end a broken stream with
OpenRouter's mid-stream error chunk, and record what each attempt did."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping

from gemmaserve.cluster.endpoints import Endpoint
from gemmaserve.cluster.routing import RouteRequest, Router
from gemmaserve.cluster.stats import Outcome, StatsBook
from gemmaserve.cluster.transport import FORWARDED_HEADERS, EndpointFailure, Opened, Transport

# Statuses another endpoint may answer better: the endpoint's trouble, not the request's.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Statuses OpenRouter's uptime counts as the endpoint's errors (429 and client errors are not).
DOWN_STATUSES = frozenset({401, 402, 404})
DONE = b"data: [DONE]\n\n"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class Attempt:
    """One try on one endpoint, as /generation's provider_responses lists it."""

    endpoint: Endpoint
    model: str
    t_start: float  # monotonic
    status: int | None = None
    error: str | None = None

    def record(self, now: float) -> dict[str, Any]:
        return {"id": None, "endpoint_id": self.endpoint.tag, "model_permaslug": self.model,
                "provider_name": self.endpoint.tag, "status": self.status,
                "latency": int((now - self.t_start) * 1000), "is_byok": False, "routed_service_tier": None}


@dataclass
class Observed:
    """What the relay learned from the answer's own frames (for stats and /generation)."""

    gen_id: str | None = None
    created: int | None = None
    model: str | None = None
    t_first: float | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    error: dict[str, Any] | None = None
    data_sent: bool = False  # a `data:` event reached the client: no failing over any more
    extra: dict[str, Any] = field(default_factory=dict)

    def see(self, obj: dict[str, Any], now: float) -> None:
        self.gen_id = obj.get("id", self.gen_id)
        self.created = obj.get("created", self.created)
        self.model = obj.get("model", self.model)
        if obj.get("usage"):
            self.usage = obj["usage"]
        if obj.get("error"):
            self.error = obj["error"]
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            if self.t_first is None and (delta.get("content") or delta.get("reasoning") or delta.get("tool_calls")
                                         or choice.get("text")):
                self.t_first = now
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.native_finish_reason = choice.get("native_finish_reason")
            if choice.get("error"):
                self.error = choice["error"]


class Forwarder:
    """Runs requests over the router's plans. `transports` maps endpoint tag -> Transport."""

    def __init__(self, router: Router, stats: StatsBook, transports: Mapping[str, Transport],
                 on_record: Callable[[dict[str, Any]], None]):
        self.router, self.stats, self.transports = router, stats, transports
        self.on_record = on_record

    def _body_for(self, body: dict[str, Any], model: str, ep: Endpoint) -> bytes:
        # The ingress has applied the routing fields; the endpoint gets one model and no provider
        # preferences (a replica would otherwise filter itself by our endpoint names).
        out = {k: v for k, v in body.items() if k not in ("provider", "models")}
        out["model"] = ep.upstream_model or model
        return _dumps(out)

    async def _open(self, attempt: Attempt, method: str, path: str, headers: list[tuple[str, str]],
                    body: dict[str, Any]) -> Opened | None:
        """Open one attempt; None when it failed in a way the next endpoint may fix."""
        st = self.stats[attempt.endpoint.tag]
        st.started()
        try:
            opened = await self.transports[attempt.endpoint.tag].open(
                method, path, "", headers, self._body_for(body, attempt.model, attempt.endpoint))
        except EndpointFailure as exc:
            attempt.error = str(exc)
            st.finished(Outcome(time.monotonic(), ok=False))
            return None
        except BaseException:
            st.finished(None)
            raise
        attempt.status = opened.status
        if opened.status in RETRY_STATUSES or (not attempt.endpoint.is_replica and opened.status in DOWN_STATUSES):
            attempt.error = (await _read_all(opened))[:2000].decode("utf-8", "replace")
            bad = opened.status >= 500 or opened.status in DOWN_STATUSES
            st.finished(Outcome(time.monotonic(), ok=False) if bad else None)
            return None
        return opened

    async def run(self, route: RouteRequest, method: str, path: str, headers: Mapping[str, str],
                  body: dict[str, Any], stream: bool) -> tuple[int, dict[str, str], Any]:
        """(status, headers, content): content is bytes for a whole body, or an async iterator of
        SSE bytes for a stream. Raises RoutingError when no endpoint may serve."""
        t0 = time.monotonic()
        plan = self.router.plan(route, t0)
        fwd = [(k, v) for k, v in headers.items() if k.lower() in FORWARDED_HEADERS]
        attempts: list[Attempt] = []
        for i, (model, ep) in enumerate(plan):
            attempt = Attempt(ep, model, time.monotonic())
            attempts.append(attempt)
            opened = await self._open(attempt, method, path, fwd, body)
            if opened is None:
                continue
            if stream and opened.status == 200:
                return 200, _sse_headers(opened), self._relay(route, opened, attempt, attempts, plan[i + 1:],
                                                              method, path, fwd, body, t0)
            try:
                raw = await _read_all(opened)
            except EndpointFailure as exc:  # died before its answer was whole: nothing was sent
                attempt.error = str(exc)
                self.stats[ep.tag].finished(Outcome(time.monotonic(), ok=False))
                continue
            except BaseException:  # the client left: the endpoint stops generating for nobody
                self.stats[ep.tag].finished(None)
                await opened.close()
                raise
            return opened.status, _json_headers(opened), self._finish_whole(route, attempt, attempts, raw, t0)
        return 502, {}, self._all_failed(attempts)

    def _finish_whole(self, route: RouteRequest, attempt: Attempt, attempts: list[Attempt], raw: bytes,
                      t0: float) -> bytes:
        ep, now = attempt.endpoint, time.monotonic()
        ok = attempt.status == 200
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and attempt.status == 200:
            seen = Observed()
            seen.see(obj, now)
            seen.t_first = now  # a whole answer's first token reaches the client with the rest
            ok = seen.error is None
            if not ep.is_replica and "provider" in obj:
                obj["provider"] = ep.tag
                raw = _dumps(obj)
            self._record(route, attempt, attempts, seen, t0, streamed=False, cancelled=False)
        # A 4xx the endpoint passed through (bad sampling values, prompt too long) is the
        # request's fault: uptime does not count it (OpenRouter excludes 400/413/429 likewise).
        self.stats[ep.tag].finished(self._outcome(ok, t0, now, None) if attempt.status == 200 else None)
        if ok:
            self.router.served(route, ep, now)
        return raw

    def _outcome(self, ok: bool, t0: float, now: float, seen: Observed | None) -> Outcome:
        ttft = (seen.t_first - t0) if seen is not None and seen.t_first is not None else (now - t0)
        tokens = (seen.usage or {}).get("completion_tokens") if seen is not None else None
        tps = tokens / (now - t0) if tokens and now > t0 else None
        return Outcome(now, ok=ok, ttft_s=ttft if ok else None, tokens_per_s=tps if ok else None)

    async def _relay(self, route: RouteRequest, opened: Opened, attempt: Attempt, attempts: list[Attempt],
                     rest: list[tuple[str, Endpoint]], method: str, path: str, fwd: list[tuple[str, str]],
                     body: dict[str, Any], t0: float) -> AsyncIterator[bytes]:
        seen = Observed()
        finished = False
        try:
            while True:
                ep = attempt.endpoint
                try:
                    async for event in _events(opened.chunks):
                        now = time.monotonic()
                        if event.startswith(b"data: ") and event.strip() != DONE.strip():
                            try:
                                obj = json.loads(event[6:])
                            except ValueError:
                                obj = None
                            if isinstance(obj, dict):
                                seen.see(obj, now)
                                if not ep.is_replica and "provider" in obj:
                                    obj["provider"] = ep.tag
                                    event = b"data: " + _dumps(obj) + b"\n\n"
                        if event.startswith(b"data: "):
                            seen.data_sent = True
                        yield event
                    finished = True
                    now = time.monotonic()
                    self.stats[ep.tag].finished(self._outcome(seen.error is None, t0, now, seen))
                    if seen.error is None:
                        self.router.served(route, ep, now)
                    self._record(route, attempt, attempts, seen, t0, streamed=True, cancelled=False)
                    return
                except EndpointFailure as exc:
                    attempt.error = str(exc)
                    self.stats[ep.tag].finished(Outcome(time.monotonic(), ok=False))
                if seen.data_sent:
                    finished = True
                    yield self._error_chunk(seen, ep)
                    yield DONE
                    seen.error = {"code": 502, "message": "Provider disconnected unexpectedly"}
                    seen.finish_reason = seen.native_finish_reason = "error"
                    self._record(route, attempt, attempts, seen, t0, streamed=True, cancelled=False)
                    return
                # Only keep-alive comments went out: the next endpoint answers instead.
                opened = None
                while rest and opened is None:
                    model, nxt = rest.pop(0)
                    attempt = Attempt(nxt, model, time.monotonic())
                    attempts.append(attempt)
                    opened = await self._open(attempt, method, path, fwd, body)
                    if opened is not None and opened.status != 200:
                        await opened.close()
                        attempt.error = f"status {opened.status}"
                        self.stats[nxt.tag].finished(None)
                        opened = None
                if opened is None:
                    finished = True
                    yield self._error_chunk(seen, attempt.endpoint)
                    yield DONE
                    return
        finally:
            if not finished:  # the client left mid-stream: stop the endpoint's work too
                self.stats[attempt.endpoint.tag].finished(None)
                if opened is not None:
                    await opened.close()
                self._record(route, attempt, attempts, seen, t0, streamed=True, cancelled=True)

    def _error_chunk(self, seen: Observed, ep: Endpoint) -> bytes:
        """OpenRouter's mid-stream error (spec api §4.5): top-level error, finish_reason error."""
        return b"data: " + _dumps({
            "id": seen.gen_id, "object": "chat.completion.chunk", "created": seen.created or int(time.time()),
            "model": seen.model, "provider": ep.tag,
            "error": {"code": 502, "message": "Provider disconnected unexpectedly",
                      "metadata": {"error_type": "provider_unavailable"}},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                         "native_finish_reason": "error"}],
        }) + b"\n\n"

    def _all_failed(self, attempts: list[Attempt]) -> bytes:
        tried = ", ".join(a.endpoint.tag for a in attempts)
        return _dumps({"error": {"code": 502, "message": f"No endpoint could serve the request (tried {tried}).",
                                 "metadata": {"error_type": "provider_unavailable",
                                              "provider_name": attempts[-1].endpoint.tag if attempts else None}}})

    def _record(self, route: RouteRequest, attempt: Attempt, attempts: list[Attempt], seen: Observed, t0: float,
                *, streamed: bool, cancelled: bool) -> None:
        if seen.gen_id is None:
            return
        now = time.monotonic()
        self.on_record(generation_record(seen, attempt.endpoint, [a.record(now) for a in attempts], t0, now,
                                         streamed=streamed, cancelled=cancelled, session=route.session_key))


def generation_record(seen: Observed, ep: Endpoint, responses: list[dict[str, Any]], t0: float, now: float, *,
                      streamed: bool, cancelled: bool, session: str | None) -> dict[str, Any]:
    """The /generation record (spec api §8.1) of a request the cluster served, naming the endpoint."""
    u = seen.usage or {}
    cost = u.get("cost")
    return {
        "id": seen.gen_id, "upstream_id": seen.gen_id, "request_id": seen.gen_id, "total_cost": cost, "usage": cost,
        "cache_discount": None, "upstream_inference_cost": (u.get("cost_details") or {}).get("upstream_inference_cost", cost),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seen.created or time.time())),
        "model": seen.model, "app_id": None, "streamed": streamed, "cancelled": cancelled,
        "provider_name": ep.tag, "latency": int((now - t0) * 1000),
        "generation_time": int((now - seen.t_first) * 1000) if seen.t_first is not None else 0,
        "moderation_latency": None, "finish_reason": seen.finish_reason,
        "native_finish_reason": seen.native_finish_reason,
        "tokens_prompt": u.get("prompt_tokens"), "tokens_completion": u.get("completion_tokens"),
        "native_tokens_prompt": u.get("prompt_tokens"), "native_tokens_completion": u.get("completion_tokens"),
        "native_tokens_completion_images": 0,
        "native_tokens_reasoning": (u.get("completion_tokens_details") or {}).get("reasoning_tokens"),
        "native_tokens_cached": (u.get("prompt_tokens_details") or {}).get("cached_tokens"),
        "num_media_prompt": None, "num_input_audio_prompt": None, "num_media_completion": 0,
        "num_search_results": None, "num_fetches": None, "origin": "", "http_referer": None, "user_agent": None,
        "external_user": None, "is_byok": False, "api_type": "completions", "router": "gemmaserve-cluster",
        "preset_id": None, "session_id": session.split(":", 1)[1] if session and session.startswith("session:") else None,
        "service_tier": None, "data_region": None, "workspace_id": None, "response_cache_source_id": None,
        "web_search_engine": None, "provider_responses": responses,
    }


async def _read_all(opened: Opened) -> bytes:
    parts = [c async for c in opened.chunks]
    return b"".join(parts)


async def _events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Whole SSE events (`...\\n\\n`) from arbitrarily split chunks."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            yield event + b"\n\n"
    if buf.strip():
        yield buf if buf.endswith(b"\n\n") else buf + b"\n\n"


def _sse_headers(opened: Opened) -> dict[str, str]:
    keep = {"x-generation-id"}
    return {k: v for k, v in opened.headers if k.lower() in keep}


def _json_headers(opened: Opened) -> dict[str, str]:
    keep = {"x-generation-id", "retry-after"}
    return {k: v for k, v in opened.headers if k.lower() in keep}
