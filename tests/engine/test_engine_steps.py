"""Engine step loop on a paged-KV-checking fake model: batching invariance, preemption, prefix
cache, stop conditions, per-request error isolation, no block leaks."""

import pytest
from engine_fakes import PagedEchoModel, fake_config

from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine.engine import Engine
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.types import FinishReason, InvalidRequestError, PromptTooLongError, SamplingParams


def make_engine(num_blocks=64, block_size=4, budget=32, chunk=None, max_seqs=8, prefix=True, max_len=None):
    cfg = fake_config(window=8)
    if isinstance(num_blocks, int):
        num_blocks = {SLIDING: num_blocks, FULL: num_blocks}
    ec = EngineConfig(
        dtype="float32",
        max_model_len=max_len,
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=prefix),
        scheduler=SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, long_prefill_chunk=chunk),
    )
    return Engine(PagedEchoModel(cfg), cfg, ec)


def greedy(n, **kw):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def prompt(seed, n):
    return [2 + (seed * 31 + i * 7) % 90 for i in range(n)]


def run(engine, joins, max_steps=500):
    """joins: {step_index: [(rid, prompt, params)]}; returns final outputs by id and all outputs."""
    finals, every = {}, []
    for s in range(max_steps):
        for rid, p, params in joins.get(s, []):
            engine.add_request(rid, p, params)
        outs = engine.step()
        every += outs
        for o in outs:
            if o.finished:
                finals[o.request_id] = o
        if not engine.has_unfinished_requests() and s >= max(joins):
            return finals, every
    raise AssertionError("engine did not finish")


def assert_no_leaks(engine):
    for pool in engine.kv.pools.values():
        assert pool.num_free == pool.num_blocks
        assert not any(pool.ref_counts)


def solo(rid, p, params):
    finals, _ = run(make_engine(), {0: [(rid, p, params)]})
    return finals[rid].token_ids


def test_batched_requests_joining_at_different_steps_match_solo_runs():
    reqs = [("a", prompt(1, 5), greedy(12)), ("b", prompt(2, 23), greedy(9)), ("c", prompt(3, 1), greedy(15)),
            ("d", prompt(4, 40), greedy(6))]
    alone = {rid: solo(rid, p, sp) for rid, p, sp in reqs}
    engine = make_engine(budget=16, chunk=7)
    finals, every = run(engine, {0: reqs[:2], 2: reqs[2:3], 5: reqs[3:]})
    for rid, *_ in reqs:
        assert finals[rid].token_ids == alone[rid]
        assert finals[rid].finish_reason is FinishReason.LENGTH
        # deltas concatenate to the final token list
        assert [t for o in every if o.request_id == rid for t in o.new_token_ids] == alone[rid]
    assert len(set(map(tuple, alone.values()))) == 4
    assert_no_leaks(engine)


def test_preempted_requests_finish_with_the_same_tokens():
    reqs = [(f"r{i}", prompt(10 + i, 6 + 3 * i), greedy(20)) for i in range(4)]
    alone = {rid: solo(rid, p, sp) for rid, p, sp in reqs}
    for prefix in (False, True):
        # 14 full blocks of 4 tokens cannot hold four sequences of ~30 tokens: preemption is forced.
        engine = make_engine(num_blocks={SLIDING: 64, FULL: 14}, budget=64, prefix=prefix)
        finals, _ = run(engine, {0: reqs})
        assert engine.scheduler.num_preemptions > 0
        for rid, *_ in reqs:
            assert finals[rid].token_ids == alone[rid]
        assert_no_leaks(engine)


def test_prefix_cached_run_gives_identical_output_and_reports_cached_tokens():
    shared = prompt(5, 21)
    engine = make_engine(budget=64)
    first, _ = run(engine, {0: [("x", shared, greedy(8))]})
    assert first["x"].num_cached_tokens == 0
    second, _ = run(engine, {0: [("y", shared, greedy(8))]})
    assert second["y"].token_ids == first["x"].token_ids
    assert second["y"].num_cached_tokens == 20  # 5 full blocks; the last prompt token recomputed
    longer = shared + [7, 8, 9, 10, 11]
    third, _ = run(engine, {0: [("z", longer, greedy(5))]})
    assert third["z"].num_cached_tokens == 20
    assert third["z"].token_ids == solo("z", longer, greedy(5))
    assert engine.stats().prefix_cache_hit_rate == pytest.approx(40 / (21 + 21 + 26))
    assert_no_leaks(engine)


def test_stop_token_max_model_len_and_validation():
    engine = make_engine(max_len=40)
    ref = solo("s", prompt(6, 10), greedy(10))
    stop_at = ref[3]
    params = SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=[stop_at])
    finals, _ = run(engine, {0: [("s", prompt(6, 10), params)]})
    out = finals["s"]
    first = ref.index(stop_at)
    assert out.token_ids == ref[: first + 1]
    assert out.finish_reason is FinishReason.STOP and out.stop_reason == stop_at
    finals, _ = run(engine, {0: [("m", prompt(6, 30), SamplingParams(max_tokens=None, temperature=0.0, ignore_eos=True))]})
    assert len(finals["m"].token_ids) == 10 and finals["m"].finish_reason is FinishReason.LENGTH
    with pytest.raises(PromptTooLongError, match="maximum context length is 40 tokens"):
        engine.add_request("long", prompt(1, 35), greedy(6))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        engine.add_request("bad", [3, 97], greedy(2))
    with pytest.raises(InvalidRequestError):
        engine.add_request("empty", [], greedy(2))
    assert_no_leaks(engine)


class Exploding:
    def mask_logits(self, output_token_ids, logits):
        if len(output_token_ids) == 2:
            raise RuntimeError("grammar broke")


def test_one_request_error_does_not_take_down_the_others():
    engine = make_engine()
    ok_ref = solo("ok", prompt(8, 9), greedy(6))
    bad = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, constraints=[Exploding()])
    finals, _ = run(engine, {0: [("ok", prompt(8, 9), greedy(6)), ("bad", prompt(9, 9), bad)]})
    assert finals["ok"].token_ids == ok_ref and finals["ok"].finish_reason is FinishReason.LENGTH
    assert finals["bad"].finish_reason is FinishReason.ERROR
    assert "grammar broke" in finals["bad"].error
    assert len(finals["bad"].token_ids) == 2
    assert_no_leaks(engine)


def test_abort_returns_final_output_and_frees_blocks():
    engine = make_engine(budget=8)
    # 2 kinds x 64 blocks x 4 tokens x (1 head x dim 2 x K,V x 4 bytes)
    assert engine.kv_cache_bytes == 2 * 64 * 4 * 16
    engine.add_request("a", prompt(1, 30), greedy(5))
    engine.step()
    assert engine.kv.usage > 0
    out = engine.abort("a")
    assert out.finished and out.finish_reason is FinishReason.ABORT and out.token_ids == []
    assert engine.abort("a") is None
    assert not engine.has_unfinished_requests()
    assert_no_leaks(engine)


def test_sampling_rows_and_slot_mapping_of_a_mixed_step():
    engine = make_engine(budget=10, chunk=10)
    engine.add_request("d", prompt(1, 3), greedy(4))
    engine.step()  # d prefilled and sampled its first token
    engine.add_request("p", prompt(2, 20), greedy(4))
    engine.step()
    batch = engine.runner.model.calls[-1]
    assert batch.query_lens_cpu == [1, 9]  # d decodes, p gets the rest of the budget
    assert batch.seq_lens_cpu == [4, 9]
    assert batch.query_start_loc.tolist() == [0, 1, 10]
    assert batch.logits_indices.tolist() == [0]  # p is mid-prefill: it does not sample
    assert batch.positions.tolist() == [3] + list(range(9))
    d_table = batch.kinds[FULL].block_tables[0].tolist()
    assert batch.kinds[FULL].slot_mapping[0].item() == d_table[0] * 4 + 3


def test_a_request_that_can_never_get_blocks_fails_instead_of_hanging():
    engine = make_engine(num_blocks={SLIDING: 64, FULL: 4}, budget=64)
    # Bypass the start-up guard: shrink the pool under an already built engine.
    engine.add_request("big", prompt(1, 10), greedy(2))
    engine.kv.pools[FULL].free_queue.popitem()
    engine.kv.pools[FULL].free_queue.popitem()
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [("big", FinishReason.ERROR)]
    assert "does not fit" in outs[0].error and not engine.has_unfinished_requests()


def test_random_workload_keeps_refcounts_exact_and_leaks_nothing():
    import random
    from collections import Counter

    rng = random.Random(0)
    engine = make_engine(num_blocks={SLIDING: 24, FULL: 20}, budget=16, chunk=6, max_len=64)
    shared = prompt(99, 12)  # a common prefix so the prefix cache is exercised under pressure
    finals, submitted, n = {}, {}, 0
    for step in range(400):
        if step < 300 and rng.random() < 0.3:
            body = prompt(n, rng.randint(1, 20))
            ids = shared[: rng.randint(0, 12)] + body
            submitted[f"q{n}"] = (ids, greedy(rng.randint(1, 20)))
            engine.add_request(f"q{n}", *submitted[f"q{n}"])
            n += 1
        live = list(engine.scheduler.requests)
        if live and rng.random() < 0.05:
            rid = rng.choice(live)
            finals[rid] = engine.abort(rid)
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        # Every reference a pool counts is held by exactly one table entry of a live request.
        for kind, pool in engine.kv.pools.items():
            held = Counter(b for r in engine.scheduler.running for b in r.block_tables.get(kind, []) if b >= 0)
            assert all(pool.ref_counts[b] == held.get(b, 0) for b in range(pool.num_blocks))
            assert set(pool.free_queue) == {b for b in range(pool.num_blocks) if held.get(b, 0) == 0}
        if step >= 300 and not engine.has_unfinished_requests():
            break
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.num_preemptions > 0 and engine.kv.stats.hit_tokens > 0
    assert all(o.finish_reason is not FinishReason.ERROR for o in finals.values() if o is not None)
    assert_no_leaks(engine)
    # Whatever ran to its length gave the tokens it gives alone, preemptions and prefix hits included.
    done = [rid for rid, o in finals.items() if o is not None and o.finish_reason is FinishReason.LENGTH]
    assert len(done) > 40
    for rid in done:
        assert finals[rid].token_ids == solo(rid, *submitted[rid])
