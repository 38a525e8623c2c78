"""AsyncEngine: streaming deltas, abort and client disconnect free blocks, queue limits, errors."""

import asyncio
import threading

import pytest
from engine_fakes import PagedEchoModel, fake_config

from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine.async_engine import AsyncEngine
from gemmaserve.engine.engine import Engine
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.types import (
    EngineDeadError,
    FinishReason,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
)


class GatedModel(PagedEchoModel):
    """Blocks inside forward until released, so a test can hold the loop mid-step."""

    def __init__(self, config):
        super().__init__(config)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def forward(self, batch, kv_caches):
        self.entered.set()
        assert self.release.wait(10)
        return super().forward(batch, kv_caches)


def make(model_cls=PagedEchoModel, max_waiting=8, max_len=None):
    cfg = fake_config()
    ec = EngineConfig(
        dtype="float32",
        max_model_len=max_len,
        cache=CacheConfig(block_size=4, num_blocks={SLIDING: 64, FULL: 256}),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32, max_waiting=max_waiting),
    )
    model = model_cls(cfg)
    return AsyncEngine(Engine(model, cfg, ec)), model


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


async def wait_idle(engine, timeout=5.0):
    """Blocks are freed by the loop thread; poll until it has caught up."""
    for _ in range(int(timeout / 0.01)):
        s = engine.stats()
        if s.kv_usage == 0.0 and s.num_running == 0 and s.num_waiting == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine not idle: {engine.stats()}")


async def test_streams_one_delta_per_token_and_matches_sync_engine():
    engine, _ = make()
    try:
        assert engine.is_ready
        prompt = [5, 6, 7, 8, 9, 10, 11]
        outs = [o async for o in engine.generate(prompt, greedy(6), "a")]
        assert [len(o.new_token_ids) for o in outs] == [1] * 6
        assert [o.finished for o in outs] == [False] * 5 + [True]
        assert outs[-1].finish_reason is FinishReason.LENGTH
        assert [t for o in outs for t in o.new_token_ids] == outs[-1].token_ids
        sync_engine = make()[0].engine
        sync_engine.add_request("a", prompt, greedy(6))
        expected = []
        while sync_engine.has_unfinished_requests():
            expected += [t for o in sync_engine.step() for t in o.new_token_ids]
        assert outs[-1].token_ids == expected
        await wait_idle(engine)
    finally:
        await engine.shutdown()


async def test_concurrent_streams():
    engine, _ = make()
    try:
        async def one(i):
            return [o async for o in engine.generate([3 + i, 4, 5], greedy(5 + i), f"r{i}")]

        results = await asyncio.gather(*(one(i) for i in range(6)))
        for i, outs in enumerate(results):
            assert len(outs[-1].token_ids) == 5 + i and outs[-1].finished
        await wait_idle(engine)
    finally:
        await engine.shutdown()


async def test_disconnect_aborts_and_frees_blocks():
    engine, _ = make()
    try:
        gen = engine.generate(list(range(2, 30)), greedy(900), "gone")
        first = await gen.__anext__()
        assert not first.finished
        assert engine.stats().kv_usage > 0
        await gen.aclose()  # what a client disconnect does to the API's iterator
        await wait_idle(engine)
        assert not engine.engine.has_unfinished_requests()
    finally:
        await engine.shutdown()


async def test_cancelled_consumer_task_aborts():
    engine, _ = make()
    try:
        seen = asyncio.Event()

        async def consume():
            async for _ in engine.generate([2, 3, 4], greedy(900), "cancel-me"):
                seen.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(seen.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_idle(engine)
    finally:
        await engine.shutdown()


async def test_explicit_abort_ends_the_stream_with_abort():
    engine, _ = make()
    try:
        outs = []
        async for out in engine.generate([2, 3, 4], greedy(900), "x"):
            outs.append(out)
            if len(outs) == 2:
                await engine.abort("x")
        assert outs[-1].finished and outs[-1].finish_reason is FinishReason.ABORT
        assert len(outs) < 50
        await wait_idle(engine)
    finally:
        await engine.shutdown()


async def test_queue_full_while_loop_is_busy():
    engine, model = make(GatedModel, max_waiting=2)
    try:
        model.release.clear()
        running = engine.generate([2, 3, 4], greedy(3), "run")
        first = asyncio.create_task(running.__anext__())
        await asyncio.to_thread(model.entered.wait, 5)  # the loop is inside a step now
        queued = [engine.generate([5, 6], greedy(2), f"q{i}") for i in range(2)]
        tasks = [asyncio.create_task(g.__anext__()) for g in queued]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError):
            await engine.generate([7, 8], greedy(2), "overflow").__anext__()
        model.release.set()
        await first
        async for _ in running:
            pass
        for t, g in zip(tasks, queued):
            await t
            async for _ in g:
                pass
        await wait_idle(engine)
    finally:
        model.release.set()
        await engine.shutdown()


async def test_validation_errors_and_dead_engine():
    engine, _ = make(max_len=32)
    try:
        with pytest.raises(PromptTooLongError, match="maximum context length is 32 tokens"):
            await engine.generate(list(range(2, 30)), greedy(10), "long").__anext__()
        with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
            await engine.generate([2, engine.vocab_size], greedy(2), "bad").__anext__()
        with pytest.raises(InvalidRequestError):
            await engine.generate([2, 3], SamplingParams(temperature=-1.0), "badtemp").__anext__()
        assert engine.max_model_len == 32
    finally:
        await engine.shutdown()
    assert not engine.is_ready
    with pytest.raises(EngineDeadError):
        await engine.generate([2, 3], greedy(2), "late").__anext__()
