"""AsyncEngine built by a factory inside its loop thread; one event-loop wake-up per step."""

import asyncio
import threading

import pytest
from engine_fakes import PagedEchoModel, fake_config

from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine.async_engine import AsyncEngine
from gemmaserve.engine.engine import Engine
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.types import FinishReason, SamplingParams


def build(max_num_seqs=4):
    cfg = fake_config()
    ec = EngineConfig(
        dtype="float32",
        cache=CacheConfig(block_size=4, num_blocks={SLIDING: 64, FULL: 256}),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=32, max_waiting=8),
    )
    return Engine(PagedEchoModel(cfg), cfg, ec)


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


async def test_factory_runs_in_the_loop_thread_and_the_engine_serves():
    built_in: list[str] = []

    def factory():
        built_in.append(threading.current_thread().name)
        return build()

    engine = AsyncEngine(factory=factory)
    try:
        assert built_in == ["gemmaserve-engine"]  # the thread that later runs every step
        assert engine.max_model_len == engine.engine.max_model_len
        assert engine.vocab_size == engine.engine.vocab_size
        assert engine.max_waiting == 8
        outs = [o async for o in engine.generate([5, 6, 7, 8, 9], greedy(4), "a")]
        assert [len(o.new_token_ids) for o in outs] == [1, 1, 1, 1]
        assert outs[-1].finish_reason is FinishReason.LENGTH
        sync = build()
        sync.add_request("a", [5, 6, 7, 8, 9], greedy(4))
        expected = []
        while sync.has_unfinished_requests():
            expected += [t for o in sync.step() for t in o.new_token_ids]
        assert outs[-1].token_ids == expected
    finally:
        await engine.shutdown()


def test_factory_error_propagates_and_the_thread_ends():
    class Boom(RuntimeError):
        pass

    def factory():
        raise Boom("no weights")

    def live():
        return sum(1 for t in threading.enumerate() if t.name == "gemmaserve-engine")

    before = live()
    with pytest.raises(Boom, match="no weights"):
        AsyncEngine(factory=factory)
    assert live() == before  # the loop thread was joined, not left waiting


def test_exactly_one_of_engine_or_factory():
    with pytest.raises(ValueError):
        AsyncEngine()
    with pytest.raises(ValueError):
        AsyncEngine(build(), factory=build)


async def test_one_wake_up_per_step_for_all_streams(monkeypatch):
    engine = AsyncEngine(build(max_num_seqs=4))
    loop = asyncio.get_running_loop()
    calls: list[int] = []
    real = loop.call_soon_threadsafe

    def counting(cb, *args, **kw):
        if args and isinstance(args[0], list):
            calls.append(len(args[0]))
        return real(cb, *args, **kw)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    try:
        gate = threading.Event()
        real_step = engine.engine.step

        def gated_step():
            # The first step may start with one request: hold it until all four were sent,
            # then take the rest in (the loop drains commands only between steps).
            gate.wait(5)
            engine._drain_commands()
            return real_step()

        engine.engine.step = gated_step

        async def consume(rid):
            return [o async for o in engine.generate([3, 4, 5, 6], greedy(5), rid)]

        tasks = [asyncio.ensure_future(consume(f"r{i}")) for i in range(4)]
        while engine._pending_adds + len(engine.engine.scheduler.requests) < 4:
            await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(*tasks)
        assert [len(r) for r in results] == [5, 5, 5, 5]
        assert [r[-1].token_ids for r in results] == [results[0][-1].token_ids] * 4
        # Same prompt, same budget: the four requests share every step, so 5 wake-ups of 4 outputs.
        assert calls == [4, 4, 4, 4, 4]
    finally:
        await engine.shutdown()
