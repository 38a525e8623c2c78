"""End to end on the tiny demo checkpoint: batching invariance, preemption, prefix cache, LLM API."""

import pytest

from gemmaserve import LLM, SamplingParams
from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine.detokenizer import IncrementalDetokenizer
from gemmaserve.engine.engine import Engine
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.types import FinishReason


@pytest.fixture(scope="module")
def tiny(tiny_fp32):
    return tiny_fp32


def engine_for(tiny, num_blocks=None, budget=64, chunk=None, prefix=True, block_size=4, max_len=256):
    path, model, config, tok = tiny
    cfg = EngineConfig(
        model=str(path),
        dtype="float32",
        max_model_len=max_len,
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks or {SLIDING: 128, FULL: 128},
                          enable_prefix_caching=prefix),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, long_prefill_chunk=chunk),
    )
    return Engine(model, config, cfg, tok)


def detokenize(tok, ids):
    # What the engine must produce: every id fed once, in order, then flushed at the finish.
    # (Not tok.decode: for invalid byte-fallback runs the two differ by design.)
    d = IncrementalDetokenizer(tok, SamplingParams())
    text = "".join(d.add([i]).new_text for i in ids)
    return text + d.flush()


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def run(engine, joins):
    finals = {}
    step = 0
    while step <= max(joins) or engine.has_unfinished_requests():
        for rid, ids, params in joins.get(step, []):
            engine.add_request(rid, ids, params)
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        step += 1
        assert step < 400
    return finals


def leak_free(engine):
    return all(p.num_free == p.num_blocks for p in engine.kv.pools.values())


def prompts(tok):
    texts = ["Hello there, how are you today? I am fine.", "The cat", "Once upon a time in a land far away there lived a king",
             "abc"]
    return [[tok.bos_token_id] + tok.encode(t) for t in texts]


def test_batched_joins_and_preemption_give_the_solo_greedy_tokens(tiny):
    ps = prompts(tiny[3])
    assert max(map(len, ps)) > 16  # longer than the tiny model's sliding window
    reqs = [(f"r{i}", p, greedy(8 - i)) for i, p in enumerate(ps)]
    alone = {rid: run(engine_for(tiny, prefix=False), {0: [(rid, p, sp)]})[rid].token_ids for rid, p, sp in reqs}
    engine = engine_for(tiny, budget=12, chunk=5)
    released = []
    real_step = engine.step

    def watched_step():
        outs = real_step()
        # Sliding blocks that fell out of the 16-token window are handed back (entries -1).
        released.extend(r.request_id for r in engine.scheduler.running if -1 in r.block_tables.get(SLIDING, []))
        return outs

    engine.step = watched_step
    finals = run(engine, {0: reqs[:2], 1: reqs[2:3], 4: reqs[3:]})
    assert {"r0", "r2"} <= set(released)  # the two prompts longer than the window
    assert {rid: finals[rid].token_ids for rid in alone} == alone
    assert leak_free(engine)
    # 10 full blocks of 4 tokens cannot hold all four at once: preemption by recompute.
    small = engine_for(tiny, num_blocks={SLIDING: 64, FULL: 10}, budget=64, prefix=False, max_len=40)
    finals = run(small, {0: reqs})
    assert small.scheduler.num_preemptions > 0
    assert {rid: finals[rid].token_ids for rid in alone} == alone
    assert all(finals[rid].finish_reason is FinishReason.LENGTH for rid in alone)
    assert leak_free(small)


def test_prefix_cache_hit_reports_cached_tokens_and_same_output(tiny):
    p = prompts(tiny[3])[2]
    engine = engine_for(tiny)
    first = run(engine, {0: [("a", p, greedy(5))]})["a"]
    second = run(engine, {0: [("b", p, greedy(5))]})["b"]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == (len(p) - 1) // 4 * 4
    assert second.token_ids == first.token_ids and second.text == first.text
    assert leak_free(engine)


def test_llm_generate_api_shape(tiny):
    path, model, config, tok = tiny
    llm = LLM.from_engine(engine_for(tiny))
    outs = llm.generate(["Hello there", "The cat"], [greedy(4), SamplingParams(max_tokens=3, temperature=0.0, logprobs=2, ignore_eos=True)])
    assert [o.request_id for o in outs] == ["llm-0", "llm-1"]
    assert outs[0].prompt_token_ids == [tok.bos_token_id] + tok.encode("Hello there")
    assert len(outs[0].token_ids) == 4 and outs[0].finished and outs[0].finish_reason is FinishReason.LENGTH
    assert outs[0].text == detokenize(tok, outs[0].token_ids)
    assert outs[0].logprobs is None
    lp = outs[1].logprobs
    assert [x.token_id for x in lp] == outs[1].token_ids and all(len(x.top) == 2 for x in lp)
    assert all(x.logprob <= 0.0 and x.top[0].logprob >= x.top[1].logprob for x in lp)
    # token-id prompts, one SamplingParams for all, results in prompt order
    ids = [[2, 40, 41, 42], [2, 50]]
    by_ids = llm.generate(ids, greedy(3))
    assert [o.prompt_token_ids for o in by_ids] == ids
    single = llm.generate([2, 40, 41, 42], greedy(3))
    assert len(single) == 1 and single[0].token_ids == by_ids[0].token_ids
    assert leak_free(llm.engine)


def test_llm_loads_from_a_checkpoint_directory(tiny):
    path = tiny[0]
    llm = LLM(model=str(path), dtype="float32", max_model_len=128, max_num_seqs=4, block_size=8,
              kv_cache_memory_bytes=1 << 20)
    assert llm.engine.max_model_len == 128 and llm.engine.eos_token_ids == (1, 106, 50)
    out = llm.generate("Hello", greedy(3))[0]
    assert out.prompt_token_ids[0] == llm.tokenizer.bos_token_id and len(out.token_ids) == 3
    ref = LLM.from_engine(engine_for(tiny)).generate("Hello", greedy(3))[0]
    assert out.token_ids == ref.token_ids


def test_stop_string_cuts_the_text(tiny):
    engine = engine_for(tiny)
    p = prompts(tiny[3])[0]
    ref = run(engine, {0: [("ref", p, greedy(12))]})["ref"]
    text = ref.text
    # A two-character stop string from the middle of the greedy text, at its first occurrence.
    idx = next(
        i for i in range(2, len(text) - 1)
        if text[i : i + 2].isprintable() and "\ufffd" not in text[i : i + 2] and text.find(text[i : i + 2]) == i
    )
    stop = text[idx : idx + 2]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=[stop])
    out = run(engine, {0: [("s", p, params)]})["s"]
    assert out.finish_reason is FinishReason.STOP and out.stop_reason == stop
    assert out.text == text[:idx]
    assert out.token_ids == ref.token_ids[: len(out.token_ids)] and len(out.token_ids) < 12
    assert leak_free(engine)


async def test_async_stream_text_deltas_add_up(tiny):
    from gemmaserve.engine.async_engine import AsyncEngine

    engine = AsyncEngine(engine_for(tiny))
    try:
        p = prompts(tiny[3])[1]
        outs = [o async for o in engine.generate(p, greedy(6), "s")]
        assert "".join(o.new_text for o in outs) == outs[-1].text
        assert outs[-1].text == detokenize(tiny[3], outs[-1].token_ids)
        ref = LLM.from_engine(engine_for(tiny)).generate([p], greedy(6))[0]
        assert outs[-1].token_ids == ref.token_ids
    finally:
        await engine.shutdown()
