"""The durable ledger: accounting.Ledger over the store. `open` applies the key's rate limits and
reserves the request's worst-case cost against its spending limit (OpenRouter's 402 when it does
not fit); `close` charges the actual cost (nothing under zero-completion insurance), releases the
reservation, and queues the /generation record, all exactly once per request.

Durability: `close` hands the record to the store's writer and leaves the commit's Future on
`gen.durable`; the generation skeleton awaits it before the response's last bytes, so a client
that has its whole answer has a committed record and charge (the SIGKILL test checks this)."""

from __future__ import annotations

import time
from collections import OrderedDict
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gemmaserve.api.accounting import Outcome, build_record
from gemmaserve.api.errors import APIError
from gemmaserve.api.metrics import ServerMetrics
from gemmaserve.api.outcomes import RunTimes, ms_between
from gemmaserve.api.rate_limits import RateLimiter
from gemmaserve.api.usage import charged_usage
from gemmaserve.config import ServerConfig
from gemmaserve.store import Content, LimitExceeded, Store, utcnow

if TYPE_CHECKING:
    from gemmaserve.api.engine_run import EngineRun
    from gemmaserve.api.generation import Generation

_MILLION = Decimal(1_000_000)
_PENDING_CAP = 10_000  # RunTimes kept for the outcome middleware; callers without HTTP never collect


def _price(tokens: int, per_m: float) -> Decimal:
    return Decimal(str(per_m)) * tokens / _MILLION


class StoreLedger:
    def __init__(self, config: ServerConfig, store: Store, metrics: ServerMetrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.rate_limiter = RateLimiter()
        self._reservations: dict[str, Any] = {}
        self.pending_times: OrderedDict[str, RunTimes] = OrderedDict()

    # -- before the engine -------------------------------------------------------------------------

    def max_cost(self, prompt_tokens: int, max_tokens: int, price_factor: float = 1.0) -> Decimal:
        cfg = self.config
        f = price_factor
        return _price(prompt_tokens, cfg.prompt_price_per_m * f) + _price(max_tokens, cfg.completion_price_per_m * f)

    def open(self, gen: "Generation") -> None:
        key_hash = gen.admission.key_hash
        if key_hash is None:
            return
        rec = self.store.keys.get(key_hash)
        if rec is None:
            return  # a static --api-key: no limits, usage still recorded under its hash
        self.rate_limiter.admit(key_hash, rec.rate_limit_rpm, rec.rate_limit_rpd)
        max_tokens = gen.params.max_tokens
        if max_tokens is None:  # up to the context: the engine may fill it
            max_tokens = max(0, gen.state.engine.max_model_len - len(gen.prompt_ids))
        try:
            self._reservations[gen.gen_id] = self.store.ledger.reserve(
                key_hash, self.max_cost(len(gen.prompt_ids), max_tokens, gen.price_factor), rec.limit, rec.limit_reset,
                utcnow())
        except LimitExceeded as exc:
            raise self._payment_required(exc.remaining, len(gen.prompt_ids), max_tokens, gen.price_factor) from None

    def _payment_required(self, remaining: Decimal, prompt_tokens: int, max_tokens: int, f: float) -> APIError:
        per_token = _price(1, self.config.completion_price_per_m * f)
        left = remaining - _price(prompt_tokens, self.config.prompt_price_per_m * f)
        affordable = int(left / per_token) if per_token > 0 and left > 0 else 0
        return APIError(402, f"This request requires more credits, or fewer max_tokens. You requested up to "
                        f"{max_tokens} tokens, but can only afford {affordable}. To increase, raise this key's "
                        f"limit (PATCH /api/v1/keys/{{hash}}) or wait for its limit_reset.",
                        "payment_required", {"limit_source": "key_limit", "provider_name": None})

    # -- after it, on every exit path --------------------------------------------------------------

    def close(self, gen: "Generation", run: "EngineRun | None", outcome: Outcome) -> dict[str, Any]:
        cfg = self.config
        counts = outcome.counts
        reservation = self._reservations.pop(gen.gen_id, None)
        f = gen.price_factor  # batches run at a discount
        usage = charged_usage(counts, outcome.finish_reason, cfg.prompt_price_per_m * f, cfg.completion_price_per_m * f)
        if outcome.error is not None and not outcome.started and not outcome.cancelled:
            if reservation is not None:
                self.store.ledger.release(reservation)
            return usage  # refused before any work: no generation to record
        self.metrics.observe_tokens(counts.prompt, counts.completion, run.ttft if run else None,
                                    run.tpot if run else None)
        rec = build_record(gen, run, outcome, usage["cost"], cfg)
        gen.durable = self.store.record_generation(rec, content=self._content(gen, run, outcome),
                                                   reservation=reservation)
        self._leave_times(gen.gen_id, run, outcome)
        return usage

    def _leave_times(self, gen_id: str, run: "EngineRun | None", outcome: Outcome) -> None:
        """The run's timings for the outcome middleware (outcomes.py), by generation id."""
        now = time.monotonic()
        t_start = run.t_start if run is not None else now
        t_first = run.t_first if run is not None else None
        t_last = run.t_last if run is not None and run.t_last is not None else now
        self.pending_times[gen_id] = RunTimes(outcome.finish_reason, ms_between(t_start, t_first),
                                              ms_between(t_start, t_last), outcome.counts.completion,
                                              outcome.cancelled)
        while len(self.pending_times) > _PENDING_CAP:
            self.pending_times.popitem(last=False)

    def _content(self, gen: "Generation", run: "EngineRun | None", outcome: Outcome) -> Content | None:
        if not self.store.options.store_content:
            return None
        tok = gen.state.tokenizer
        last = run.last if run is not None else None
        prompt = tok.decode(gen.prompt_ids, skip_special_tokens=False) if tok is not None else ""
        return Content({"prompt": prompt}, last.text if last is not None else "",
                       error=outcome.error.message if outcome.error is not None else None)
