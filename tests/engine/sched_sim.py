"""Scheduler tests without a model: a two-kind KV cache, requests of consecutive token ids, and one
engine step in which every sampling request gets a fixed token."""

from __future__ import annotations

from gemmaserve.config import SchedulerConfig
from gemmaserve.engine.kv_cache import KVCacheManager
from gemmaserve.engine.request import Request
from gemmaserve.engine.scheduler import Scheduler, SchedulerOutput
from gemmaserve.model.config import FULL, SLIDING, AttentionKindSpec
from gemmaserve.types import SamplingParams


def make(num_blocks: int | dict = 64, block_size: int = 4, window: int = 8, prefix: bool = True, **cfg):
    """(Scheduler, KVCacheManager) over one sliding (`window`) and one full layer; `num_blocks` per
    kind or for both; `cfg` goes to SchedulerConfig."""
    specs = [AttentionKindSpec(SLIDING, (0,), 1, 2, window), AttentionKindSpec(FULL, (1,), 1, 2, None)]
    if isinstance(num_blocks, int):
        num_blocks = {SLIDING: num_blocks, FULL: num_blocks}
    kv = KVCacheManager(specs, num_blocks, block_size, enable_prefix_caching=prefix)
    return Scheduler(SchedulerConfig(**cfg), kv), kv


def req(rid: str, n: int, first: int = 2) -> Request:
    return Request(rid, list(range(first, first + n)), SamplingParams(), set())


def run_step(sched: Scheduler, token: int) -> tuple[list[tuple[str, int, bool]], SchedulerOutput]:
    """One engine step: [(request id, new tokens, samples)] in model order, and the scheduler output;
    every sampling request gets `token`."""
    out = sched.schedule()
    plan = [(s.request.request_id, s.num_new_tokens, s.samples) for s in out.scheduled]
    sampling = [s.request for s in out.scheduled if s.samples]
    sched.on_step_done(out)
    for r in sampling:
        r.append_token(token)
    return plan, out


def assert_pools_full(kv: KVCacheManager) -> None:
    for pool in kv.pools.values():
        assert pool.num_free == pool.num_blocks
        assert all(c == 0 for c in pool.ref_counts)
