"""Scheduler: token budget, chunked prefill, decode-first order, preemption and requeue, abort."""

from sched_sim import assert_pools_full, make, req, run_step

from gemmaserve.engine.request import Request, RequestStatus
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.types import FinishReason, SamplingParams


def step(sched):
    """One engine step without a model: every sampling request gets token 90."""
    plan, out = run_step(sched, 90)
    return [(rid, n) for rid, n, _ in plan], out


def test_budget_chunks_prefill_and_decode_goes_first():
    sched, kv = make(max_num_batched_tokens=16)
    for i, rid in enumerate("abc"):
        sched.add_request(req(rid, 10, first=2 + 20 * i))
    plan, _ = step(sched)
    assert plan == [("a", 10), ("b", 6)]  # c waits: the budget is spent
    plan, _ = step(sched)
    # a decodes (1 token, first), b finishes its prefill (4), c starts (10, fits 16 - 5 = 11)
    assert plan == [("a", 1), ("b", 4), ("c", 10)]
    assert [r.num_output_tokens for r in (sched.requests[k] for k in "abc")] == [2, 1, 1]


def test_decode_first_when_budget_is_short():
    sched, _ = make(max_num_batched_tokens=8)
    a, b = req("a", 30), req("b", 2, first=50)
    sched.add_request(b)
    sched.add_request(a)
    plan, _ = step(sched)
    assert plan == [("b", 2), ("a", 6)]
    # Put the prefilling request ahead of the decoding one: the decode still goes first, so the
    # prefill chunk gets only what is left of the budget instead of all of it.
    sched.running.reverse()
    plan, _ = step(sched)
    assert plan == [("a", 7), ("b", 1)]
    assert b.num_output_tokens == 2 and a.num_computed_tokens == 13


def test_long_prefill_chunk_and_max_num_seqs():
    sched, kv = make(max_num_batched_tokens=64, long_prefill_chunk=5, max_num_seqs=2)
    for i, rid in enumerate("abc"):
        sched.add_request(req(rid, 12, first=2 + 20 * i))
    plan, _ = step(sched)
    assert plan == [("a", 5), ("b", 5)]
    plan, _ = step(sched)
    assert plan == [("a", 5), ("b", 5)]
    plan, _ = step(sched)
    assert plan == [("a", 2), ("b", 2)]
    assert sched.waiting[0].request_id == "c"


def test_preemption_frees_newest_and_requeues_at_front():
    # Full pool: 6 blocks of 4 tokens. a and b prompts of 8 tokens (2 blocks each).
    sched, kv = make(num_blocks={SLIDING: 64, FULL: 6}, prefix=False, max_num_batched_tokens=64)
    a, b, c = req("a", 8), req("b", 8, first=40), req("c", 30, first=60)
    for r in (a, b, c):
        sched.add_request(r)
    plan, _ = step(sched)
    assert plan == [("a", 8), ("b", 8)]  # c does not fit (needs 8 blocks)
    # Decode until the 6 blocks run out: tokens 9..12 need a 3rd block each, 13.. a 4th.
    preempted = []
    for _ in range(8):
        _, out = step(sched)
        preempted += [r.request_id for r in out.preempted]
        if preempted:
            break
    assert preempted == ["b"]
    assert b.status is RequestStatus.WAITING and b.num_computed_tokens == 0 and b.block_tables == {}
    assert sched.waiting[0] is b and sched.num_preemptions == 1
    kept = list(b.output_token_ids)
    assert kept  # generated tokens survive preemption
    # Let a finish; b is re-admitted and re-prefills prompt + generated tokens in one chunk.
    sched.finish_request(a, FinishReason.LENGTH)
    plan, _ = step(sched)
    assert plan == [("b", 8 + len(kept))]
    assert b.output_token_ids[: len(kept)] == kept
    for r in list(sched.requests.values()):
        sched.finish_request(r, FinishReason.ABORT)
    assert_pools_full(kv)


def test_abort_mid_prefill_and_waiting_frees_everything():
    sched, kv = make(max_num_batched_tokens=8)
    sched.add_request(req("a", 30))
    sched.add_request(req("b", 5))
    step(sched)
    assert kv.pools[FULL].num_used == 2
    aborted = sched.abort_request("a")
    assert aborted.finish_reason is FinishReason.ABORT and aborted.is_finished
    assert sched.abort_request("b").finish_reason is FinishReason.ABORT  # still waiting
    assert sched.abort_request("missing") is None
    assert not sched.requests and not sched.running and not sched.waiting
    assert_pools_full(kv)


def test_admission_failure_releases_prefix_blocks():
    sched, kv = make(num_blocks={SLIDING: 64, FULL: 4}, max_num_batched_tokens=64)
    a = req("a", 9)
    sched.add_request(a)
    step(sched)
    # b shares a's first 8 tokens (2 cached blocks) and needs 2 more blocks: only 1 is free.
    b = Request("b", a.prompt_token_ids[:8] + list(range(50, 58)), SamplingParams(), set())
    sched.add_request(b)
    plan, _ = step(sched)
    assert plan == [("a", 1)]
    assert b.block_tables == {} and b.num_computed_tokens == 0
    assert kv.pools[FULL].ref_counts[a.block_tables[FULL][0]] == 1
    sched.finish_request(a, FinishReason.STOP)
    plan, _ = step(sched)
    assert plan == [("b", 8)] and b.num_cached_tokens == 8
    sched.finish_request(b, FinishReason.STOP)
    assert_pools_full(kv)
