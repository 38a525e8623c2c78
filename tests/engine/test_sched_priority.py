"""Scheduler priorities: interactive (0) before background (1) in admission, in the steps that
compute an interactive prompt, and in preemption (slots and KV blocks)."""

from sched_sim import assert_pools_full, make, run_step

from gemmaserve.engine.request import Request, RequestStatus
from gemmaserve.types import FinishReason, SamplingParams


def preq(rid: str, n: int, first: int, priority: int) -> Request:
    return Request(rid, list(range(first, first + n)), SamplingParams(priority=priority), set())


def plan(sched):
    p, out = run_step(sched, 90)
    return [(rid, n) for rid, n, _ in p], out


def test_waiting_queue_is_in_priority_order():
    sched, _ = make(max_num_batched_tokens=64)
    for rid, prio in [("b1", 1), ("i1", 0), ("b2", 1), ("i2", 0)]:
        sched.add_request(preq(rid, 4, 2 + 10 * len(sched.waiting), prio))
    assert [r.request_id for r in sched.waiting] == ["i1", "i2", "b1", "b2"]


def test_background_sits_out_steps_with_an_interactive_prompt():
    sched, _ = make(max_num_batched_tokens=64)
    sched.add_request(preq("b1", 4, 2, 1))
    sched.add_request(preq("b2", 4, 12, 1))
    assert plan(sched)[0] == [("b1", 4), ("b2", 4)]
    assert plan(sched)[0] == [("b1", 1), ("b2", 1)]  # decoding
    sched.add_request(preq("i1", 6, 30, 0))
    # The interactive prompt's step holds no background rows...
    assert plan(sched)[0] == [("i1", 6)]
    # ... and once it decodes, everyone decodes together again.
    assert plan(sched)[0] == [("b1", 1), ("b2", 1), ("i1", 1)]


def test_background_waits_for_admission_behind_an_interactive_prefill():
    sched, _ = make(max_num_batched_tokens=8)
    sched.add_request(preq("i1", 12, 2, 0))
    sched.add_request(preq("b1", 3, 40, 1))
    assert plan(sched)[0] == [("i1", 8)]  # budget left over, but b1 is a less urgent class
    assert plan(sched)[0] == [("i1", 4)]
    assert plan(sched)[0] == [("i1", 1), ("b1", 3)]


def test_full_running_list_preempts_background_for_interactive():
    sched, kv = make(max_num_batched_tokens=64, max_num_seqs=2)
    sched.add_request(preq("b1", 4, 2, 1))
    sched.add_request(preq("b2", 4, 12, 1))
    plan(sched)
    sched.add_request(preq("i1", 4, 30, 0))
    p, out = plan(sched)
    assert [r.request_id for r in out.preempted] == ["b2"]  # the newest of the least urgent class
    assert p == [("i1", 4)]
    assert sched.requests["b2"].status is RequestStatus.WAITING and sched.waiting[0].request_id == "b2"
    # Two interactive requests never preempt each other for a slot.
    sched.add_request(preq("i2", 4, 50, 0))
    sched.add_request(preq("i3", 4, 60, 0))
    p, out = plan(sched)
    assert [r.request_id for r in out.preempted] == ["b1"] and p == [("i1", 1), ("i2", 4)]
    p, out = plan(sched)
    assert out.preempted == [] and [r.request_id for r in sched.waiting] == ["i3", "b1", "b2"]
    for rid in list(sched.requests):
        sched.finish_request(sched.requests[rid], FinishReason.ABORT)
    assert_pools_full(kv)


def test_kv_shortage_preempts_background_not_interactive():
    # 4 blocks of 4 slots per kind: b1 (8 tokens) takes 2 blocks each kind, b2 the other 2.
    sched, kv = make(num_blocks=4, max_num_batched_tokens=64, prefix=False)
    sched.add_request(preq("b1", 7, 2, 1))
    sched.add_request(preq("b2", 7, 20, 1))
    plan(sched)
    sched.add_request(preq("i1", 7, 40, 0))
    p, out = plan(sched)
    assert [r.request_id for r in out.preempted] == ["b2"] and p == [("i1", 7)]
    for rid in list(sched.requests):
        sched.finish_request(sched.requests[rid], FinishReason.ABORT)
    assert_pools_full(kv)


def test_background_prompts_go_in_short_chunks():
    sched, kv = make(max_num_batched_tokens=512, background_prefill_chunk=16)
    sched.add_request(preq("b1", 40, 2, 1))
    assert plan(sched)[0] == [("b1", 16)]
    assert plan(sched)[0] == [("b1", 16)]
    sched.add_request(preq("i1", 40, 100, 0))
    assert plan(sched)[0] == [("i1", 40)]  # interactive: the whole prompt, background sits out
    assert plan(sched)[0] == [("b1", 8), ("i1", 1)]
    for rid in list(sched.requests):
        sched.finish_request(sched.requests[rid], FinishReason.ABORT)
    assert_pools_full(kv)
