"""Every answered inference request becomes one store Outcome (status, TTFT, duration, tokens):
the rows behind uptime, latency and throughput. An ASGI middleware, so refusals that never reach
a generation (401, 402, 404, 429...) are counted by the same rule as finished generations."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from gemmaserve.store import Outcome

# Paths whose answers count toward the endpoint's live stats (the generation endpoints).
INFERENCE_PATHS = frozenset({
    "/api/v1/chat/completions", "/v1/chat/completions", "/api/v1/completions", "/v1/completions",
    "/api/v1/responses", "/v1/responses", "/api/v1/messages", "/v1/messages",
})


@dataclass(frozen=True)
class RunTimes:
    """What the ledger learned about one generation, handed to the middleware by generation id."""

    finish_reason: str | None
    ttft_ms: int | None
    duration_ms: int | None
    tokens_completion: int
    cancelled: bool


class OutcomeRecorder:
    """ASGI middleware. The ledger leaves RunTimes in `pending` under the generation id (which the
    response carries in X-Generation-Id); the response's end turns status + RunTimes into an Outcome."""

    def __init__(self, app, state):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        store = getattr(self.state, "store", None)
        if scope["type"] != "http" or store is None or scope.get("path") not in INFERENCE_PATHS:
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        seen: dict = {}

        async def watching_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-generation-id":
                        seen["gen_id"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            pending = getattr(self.state.ledger, "pending_times", None)  # StoreLedger leaves them
            times = pending.pop(seen["gen_id"], None) if pending is not None and "gen_id" in seen else None
            status = seen.get("status", 499)
            if times is not None and times.cancelled:
                status = 499  # the client left: neither an error nor a success of the endpoint
            created = datetime.fromtimestamp(arrived, timezone.utc)
            if times is None:
                outcome = Outcome(created, status)
            else:
                outcome = Outcome(created, status, times.finish_reason, times.ttft_ms, times.duration_ms,
                                  times.tokens_completion)
            if status != 499 or times is not None:
                store.record_outcome(outcome)


def ms_between(start: float, end: float | None) -> int | None:
    return None if end is None else int((end - start) * 1000)


__all__ = ["INFERENCE_PATHS", "OutcomeRecorder", "RunTimes", "ms_between"]
