"""api.engine_run.EngineRun over a real AsyncEngine: deadline waits, the direct path, and cancellation mid-stream frees blocks."""

import asyncio
import threading

from engine_fakes import PagedEchoModel, fake_config

from gemmaserve.api.engine_run import TIMEOUT, EngineRun
from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine.async_engine import AsyncEngine
from gemmaserve.engine.engine import Engine
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.types import FinishReason, SamplingParams


class SlowModel(PagedEchoModel):
    """Each forward waits for a permit, so a test decides when the next token exists."""

    def __init__(self, config):
        super().__init__(config)
        self.permits = threading.Semaphore(0)

    def forward(self, batch, kv_caches):
        assert self.permits.acquire(timeout=10)
        return super().forward(batch, kv_caches)


def make(model_cls=PagedEchoModel):
    cfg = fake_config()
    ec = EngineConfig(
        dtype="float32",
        cache=CacheConfig(block_size=4, num_blocks={SLIDING: 64, FULL: 256}),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32),
    )
    model = model_cls(cfg)
    return AsyncEngine(Engine(model, cfg, ec)), model


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


async def idle(engine):
    for _ in range(500):
        s = engine.stats()
        if s.kv_usage == 0.0 and s.num_running == 0 and s.num_waiting == 0:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_direct_and_deadline_paths_give_the_same_stream():
    engine, _ = make()
    try:
        ids = []
        run = EngineRun(engine, [5, 6, 7, 8], greedy(5), "a")
        first = await run.next(timeout=5.0)  # the Task + wait path
        ids += first.new_token_ids
        while (out := await run.next()) is not None:  # the direct path
            ids += out.new_token_ids
        assert run.finished and run.last.finish_reason is FinishReason.LENGTH
        assert ids == run.last.token_ids and len(ids) == 5
        assert await run.next() is None
        await run.close()
        ref = EngineRun(engine, [5, 6, 7, 8], greedy(5), "b")
        while (out := await ref.next(timeout=5.0)) is not None:
            assert out is not TIMEOUT
        assert ref.last.token_ids == ids
        assert await idle(engine)
    finally:
        await engine.shutdown()


async def test_cancel_while_waiting_on_the_direct_path_aborts_and_frees_blocks():
    engine, model = make(SlowModel)
    try:
        run = EngineRun(engine, list(range(5, 30)), greedy(50), "c")
        model.permits.release()  # prefill: the first token
        first = await run.next(timeout=5.0)
        assert len(first.new_token_ids) == 1 and not first.finished
        waiter = asyncio.ensure_future(run.next())  # no deadline: awaits the iterator directly
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert engine.stats().kv_usage > 0
        waiter.cancel()  # the client went away
        try:
            await waiter
        except asyncio.CancelledError:
            pass
        assert not run.finished  # so close() still aborts
        await run.close()
        model.permits.release(100)  # let a step that was already waiting run out
        assert await idle(engine)
        assert "c" not in engine.engine.scheduler.requests
    finally:
        await engine.shutdown()
