"""Scheduler under steady-state load: a new arrival's whole prompt runs in the next step beside every decode."""

from sched_sim import make as sim_make, req, run_step

from gemmaserve.model.config import FULL, SLIDING


def make(**cfg):
    return sim_make({SLIDING: 2048, FULL: 2048}, window=64, prefix=False, **cfg)


def step(sched):
    """One engine step without a model: every sampling request gets token 7."""
    return run_step(sched, 7)[0]


def test_arrival_beside_fifteen_decodes_gets_its_whole_prompt_and_first_token_next_step():
    # The serving benchmark's steady state at concurrency 16: 15 decoding, one 512-token arrival.
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=2048)
    for i in range(15):
        sched.add_request(req(f"d{i}", 32, first=100 + 40 * i))
    step(sched)  # all 15 prefill (480 tokens) and sample
    sched.add_request(req("new", 512, first=1000))
    plan = step(sched)
    assert plan == [(f"d{i}", 1, True) for i in range(15)] + [("new", 512, True)]
    assert sched.requests["new"].num_output_tokens == 1  # its first token in the step after arrival


def test_burst_fills_the_budget_in_arrival_order_and_decodes_keep_going():
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=1024)
    for i in range(4):
        sched.add_request(req(f"r{i}", 400, first=100 + 500 * i))
    assert step(sched) == [("r0", 400, True), ("r1", 400, True), ("r2", 224, False)]
    # Decodes first, then the unfinished prefill, then the next arrival: nobody waits a whole step.
    assert step(sched) == [("r0", 1, True), ("r1", 1, True), ("r2", 176, True), ("r3", 400, True)]
    assert step(sched) == [(f"r{i}", 1, True) for i in range(4)]
