"""Continuous-batching scheduler: decode first, then chunked prefill, under a per-step token budget."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from gemmaserve.config import SchedulerConfig
from gemmaserve.engine.kv_cache import KVCacheManager
from gemmaserve.engine.request import Request, RequestStatus
from gemmaserve.types import FinishReason


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int  # tokens computed this step, starting at request.num_computed_tokens
    start: int = -1  # request.num_computed_tokens when scheduled (first new position)
    completes: bool = False  # this step reaches the end of the request's tokens
    samples: bool = False  # ... and its logits are sampled (not for a max_tokens=0 scoring request)

    def __post_init__(self) -> None:
        self.start = self.request.num_computed_tokens
        self.completes = self.start + self.num_new_tokens == self.request.num_tokens
        self.samples = self.completes and not self.request.scores_only


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """Owns the waiting queue and the running list; every block comes from the KVCacheManager.

    One step: running requests that decode (one token each) go first, then running requests in the
    middle of a chunked prefill, then waiting requests are admitted while budget, max_num_seqs and
    blocks allow. When a running request cannot get blocks, the newest running request is preempted
    (blocks freed, put back at the front of the waiting queue, recomputed later from its prompt
    plus the tokens it already generated). No admissions happen in a step that preempted.

    Two budgets: max_num_batched_tokens bounds every token of the step; max_num_prefill_tokens,
    when set, also bounds the prompt tokens (everything but the one-token decodes) whenever more
    than one request is on the server (a lone request's prompt takes the whole budget). With it a
    prompt of that size beside N decodes runs whole in one step instead of being split by the N
    decode rows, and a burst of arrivals is prefilled one cap-full per step while decodes go on.
    Unfinished prefills keep going before new admissions (first come, first served): the
    partly computed prompt is the one closest to its first token.

    Priorities (SamplingParams.priority, 0 = interactive, larger = background): the waiting queue
    is kept in priority order (first come, first served within a class); while a request of some
    class still has prompt to compute, requests of less urgent classes sit the step out (they keep
    their blocks), so a batch's decode rows never lengthen an interactive prompt's step; a full
    running list or KV cache gives way by preempting the least urgent, newest request first; and a
    background prompt is computed in short chunks (background_prefill_chunk), so an interactive
    arrival never waits behind a long background step.
    """

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        # Called once for every request that finishes, on any path, after its blocks are freed (the
        # engine releases the request's encoder-cache pins there).
        self.on_finish: Callable[[Request], None] | None = None

    # -- queue management -------------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"duplicate request id {req.request_id!r}")
        req.status = RequestStatus.WAITING
        self.requests[req.request_id] = req
        self._enqueue(req, front=False)

    def _enqueue(self, req: Request, front: bool) -> None:
        """Into the waiting queue at the front (a preempted request) or back of its priority class."""
        p = req.params.priority
        at = next((i for i, other in enumerate(self.waiting)
                   if other.params.priority > p or (front and other.params.priority == p)), len(self.waiting))
        self.waiting.insert(at, req)

    def _urgent_class(self) -> int | None:
        """The most urgent priority among requests that still have prompt to compute."""
        classes = [r.params.priority for r in self.running if r.num_remaining > 1]
        if self.waiting:
            classes.append(self.waiting[0].params.priority)  # the queue is in priority order
        return min(classes) if classes else None

    def _chunk_of(self, req: Request, chunk: int) -> int:
        """A background request's prompt goes in short chunks, so no step it is in runs long."""
        return min(chunk, self.config.background_prefill_chunk) if req.params.priority > 0 else chunk

    def _victim(self) -> Request:
        """The least urgent running request, the newest among equals."""
        worst = max(r.params.priority for r in self.running)
        return next(r for r in reversed(self.running) if r.params.priority == worst)

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    def finish_request(
        self, req: Request, reason: FinishReason, stop_reason: int | str | None = None, error: str | None = None
    ) -> None:
        """Finish on any path (stop, length, abort, error): leave the queues and free every block."""
        if req.is_finished:
            return
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        self.kv.free(req)
        req.finish(reason, stop_reason, error)
        self.requests.pop(req.request_id, None)
        if self.on_finish is not None:
            self.on_finish(req)

    def abort_request(self, request_id: str) -> Request | None:
        req = self.requests.get(request_id)
        if req is None:
            return None
        self.finish_request(req, FinishReason.ABORT)
        return req

    # -- one step -----------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        urgent = self._urgent_class()
        eligible = [r for r in self.running if urgent is None or r.params.priority <= urgent]
        decoding = [r for r in eligible if r.num_remaining == 1]
        prefilling = sorted((r for r in eligible if r.num_remaining > 1), key=lambda r: r.params.priority)
        # The prefill cap bounds how long a step of prompt tokens keeps the other requests waiting
        # (decodes, and prompts queued behind); a request alone on the server has no one to keep
        # waiting, and its prompt gets the whole budget (an idle server's TTFT).
        under_load = len(self.running) + len(self.waiting) > 1
        prefill_budget = self.config.prefill_cap(under_load)
        chunk = self.config.chunk_for(under_load)
        chosen: dict[str, ScheduledRequest] = {}
        out = SchedulerOutput()

        for req in decoding + prefilling:
            if budget == 0:
                break
            if req.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this step
            is_prefill = req.num_remaining > 1
            n = min(req.num_remaining, budget, self._chunk_of(req, chunk), prefill_budget if is_prefill else 1)
            if req.mm_spans and n:
                n = req.clip_chunk(n, min(budget, prefill_budget))
            if n == 0:
                continue  # the prefill cap is spent (or media is not encoded yet): next step
            while not self.kv.allocate_slots(req, n):
                victim = self._victim()
                self._preempt(victim)
                out.preempted.append(victim)
                undone = chosen.pop(victim.request_id, None)
                if undone is not None:
                    budget += undone.num_new_tokens
                    if undone.start + 1 < undone.request.num_tokens:  # it was a prefill chunk
                        prefill_budget += undone.num_new_tokens
                if victim is req:
                    break
            else:
                chosen[req.request_id] = ScheduledRequest(req, n)
                budget -= n
                if is_prefill:
                    prefill_budget -= n

        if not out.preempted:
            self._admit_waiting(chosen, min(budget, prefill_budget), chunk, urgent, out)
        # Model input order follows the running list so a request keeps its place between steps.
        order = {r.request_id: i for i, r in enumerate(self.running)}
        out.scheduled = sorted(chosen.values(), key=lambda s: order[s.request.request_id])
        return out

    def _admit_waiting(self, chosen: dict[str, ScheduledRequest], budget: int, chunk: int, urgent: int | None,
                       out: SchedulerOutput) -> None:
        parked: list[Request] = []  # requests whose media is still being encoded: the next ones go first
        while self.waiting and budget > 0:
            req = self.waiting[0]
            if urgent is not None and req.params.priority > urgent:
                break  # a more urgent prompt is still being computed
            if len(self.running) >= self.config.max_num_seqs:
                if not self._make_room(req, chosen, out):
                    break
                continue
            cached = self.kv.acquire_prefix(req)
            n = min(req.num_remaining, budget, self._chunk_of(req, chunk))
            if req.mm_spans:
                n = req.clip_chunk(n, budget)
                if n == 0:  # its next media span is not encoded yet (or needs a roomier step)
                    self.kv.free(req)
                    req.num_computed_tokens = 0
                    parked.append(self.waiting.popleft())  # nobody waits behind an image
                    continue
            if not self.kv.allocate_slots(req, n):
                self.kv.free(req)  # hands back the prefix blocks it just took
                req.num_computed_tokens = 0
                if not self._make_room(req, chosen, out):
                    break
                continue
            self.waiting.popleft()
            if not req.admitted:
                req.admitted = True
                req.num_cached_tokens = cached
                self.kv.stats.queried_tokens += req.num_prompt_tokens
                self.kv.stats.hit_tokens += cached
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            chosen[req.request_id] = ScheduledRequest(req, n)
            budget -= n
        self.waiting.extendleft(reversed(parked))  # back at the head, in their order

    def _make_room(self, req: Request, chosen: dict[str, ScheduledRequest], out: SchedulerOutput) -> bool:
        """Preempt the least urgent running request for `req` (slots or blocks), only when it is of a
        less urgent class and not part of this step; False when nothing may give way."""
        if not self.running:
            return False
        victim = self._victim()
        if victim.params.priority <= req.params.priority or victim.request_id in chosen:
            return False
        self._preempt(victim)
        out.preempted.append(victim)
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.num_published_blocks = 0
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self._enqueue(req, front=True)

    def on_step_done(self, out: SchedulerOutput) -> None:
        """The model wrote K/V for every scheduled token: advance progress and publish full blocks."""
        for s in out.scheduled:
            s.request.num_computed_tokens += s.num_new_tokens
            self.kv.publish_full_blocks(s.request)
