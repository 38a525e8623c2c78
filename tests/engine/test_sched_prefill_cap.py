"""The per-step cap on prompt tokens (max_num_prefill_tokens): decodes do not count against it."""

import pytest
from sched_sim import assert_pools_full, make as sim_make, req, run_step

from gemmaserve.cli import build_parser
from gemmaserve.config import CPU_DEFAULT_MAX_NUM_PREFILL_TOKENS, SchedulerConfig, engine_config_from_args
from gemmaserve.model.config import FULL, SLIDING


def make(full_blocks=2048, **cfg):
    return sim_make({SLIDING: 2048, FULL: full_blocks}, window=64, prefix=False, **cfg)


def step(sched):
    """One engine step without a model: every sampling request gets token 7."""
    return run_step(sched, 7)[0]


def decoding(sched, n):
    """n requests that have prefilled and sampled once: each decodes one token per step."""
    for i in range(n):
        sched.add_request(req(f"d{i}", 32, first=100 + 40 * i))
    assert step(sched) == [(f"d{i}", 32, True) for i in range(n)]
    return [(f"d{i}", 1, True) for i in range(n)]


def test_old_rule_splits_a_prompt_by_the_decode_rows():
    # Without the cap a 512 budget is shared: 15 decodes leave 497 tokens, the first token waits a step.
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=512)
    decodes = decoding(sched, 15)
    sched.add_request(req("new", 512, first=2000))
    assert step(sched) == decodes + [("new", 497, False)]
    assert step(sched) == decodes + [("new", 15, True)]


def test_prompt_beside_decodes_runs_whole_in_one_step_under_the_cap():
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=2048, max_num_prefill_tokens=512)
    decodes = decoding(sched, 15)
    sched.add_request(req("new", 512, first=2000))
    sched.add_request(req("next", 512, first=3000))
    # 527 tokens in the step: the decodes ride beside a whole prompt; the second prompt waits.
    assert step(sched) == decodes + [("new", 512, True)]
    assert sched.requests["new"].num_output_tokens == 1
    assert step(sched) == decodes + [("new", 1, True), ("next", 512, True)]


def test_decodes_are_never_starved_by_waiting_prompts():
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=2048, max_num_prefill_tokens=512)
    decodes = decoding(sched, 4)
    for i in range(3):
        sched.add_request(req(f"p{i}", 600, first=2000 + 700 * i))
    plans = [step(sched) for _ in range(5)]
    for plan in plans:  # every running request decodes in every step
        assert plan[:4] == decodes
    # Prompt tokens per step: 512, 512, 512, 264 (the one-token decodes of p0/p1 are not counted).
    assert plans[0][4:] == [("p0", 512, False)]
    assert plans[1][4:] == [("p0", 88, True), ("p1", 424, False)]
    assert plans[2][4:] == [("p0", 1, True), ("p1", 176, True), ("p2", 336, False)]
    assert plans[3][4:] == [("p0", 1, True), ("p1", 1, True), ("p2", 264, True)]
    assert plans[4][4:] == [("p0", 1, True), ("p1", 1, True), ("p2", 1, True)]


def test_cap_is_honoured_across_several_waiting_prompts():
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=2048, max_num_prefill_tokens=512)
    for i in range(5):
        sched.add_request(req(f"p{i}", 200, first=100 + 300 * i))
    # FCFS: the unfinished chunk of p2 goes before the next admissions.
    assert step(sched) == [("p0", 200, True), ("p1", 200, True), ("p2", 112, False)]
    assert step(sched) == [("p0", 1, True), ("p1", 1, True), ("p2", 88, True), ("p3", 200, True), ("p4", 200, True)]
    assert step(sched) == [(f"p{i}", 1, True) for i in range(5)]


def test_the_whole_step_still_fits_max_num_batched_tokens():
    # A cap above what the step budget leaves after the decodes: the budget binds, decodes first.
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=520, max_num_prefill_tokens=512)
    decodes = decoding(sched, 15)
    sched.add_request(req("new", 512, first=2000))
    assert step(sched) == decodes + [("new", 505, False)]
    assert step(sched) == decodes + [("new", 7, True)]


def test_prompts_longer_than_the_cap_are_chunked_beside_a_decode():
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=2048, max_num_prefill_tokens=512)
    decodes = decoding(sched, 1)
    long = req("long", 1300, first=2000)
    sched.add_request(long)
    assert step(sched) == decodes + [("long", 512, False)]
    assert step(sched) == decodes + [("long", 512, False)]
    assert step(sched) == decodes + [("long", 276, True)]
    assert long.num_computed_tokens == 1300 and long.output_token_ids == [7]
    assert step(sched) == decodes + [("long", 1, True)]


def test_long_prefill_chunk_still_caps_one_request_under_the_step_cap():
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=2048, max_num_prefill_tokens=512, long_prefill_chunk=300)
    for i in range(3):
        sched.add_request(req(f"p{i}", 400, first=100 + 500 * i))
    assert step(sched) == [("p0", 300, False), ("p1", 212, False)]
    assert step(sched) == [("p0", 100, True), ("p1", 188, True), ("p2", 224, False)]


def test_abort_mid_chunk_frees_every_block():
    sched, kv = make(max_num_seqs=32, max_num_batched_tokens=2048, max_num_prefill_tokens=512)
    decoding(sched, 2)
    sched.add_request(req("long", 1300, first=2000))
    sched.add_request(req("queued", 40, first=4000))
    step(sched)
    long = sched.requests["long"]
    assert long.num_computed_tokens == 512 and kv.pools[FULL].num_used == 2 * 9 + 128
    assert sched.abort_request("long").is_finished
    assert long.block_tables == {} and kv.pools[FULL].num_used == 2 * 9
    # The freed cap goes to the queued prompt in the next step.
    assert step(sched) == [("d0", 1, True), ("d1", 1, True), ("queued", 40, True)]
    for rid in list(sched.requests):
        sched.abort_request(rid)
    assert not sched.requests and not sched.running and not sched.waiting
    assert_pools_full(kv)


def test_preempted_request_is_recomputed_under_the_cap():
    # 140 full blocks of 4 tokens: two 264-token requests (66 blocks each) leave 8 blocks; decoding
    # past them preempts the newer one, whose prompt + outputs come back in cap-sized chunks.
    sched, kv = make(full_blocks=140, max_num_seqs=32, max_num_batched_tokens=2048, max_num_prefill_tokens=200)
    sched.add_request(req("a", 264, first=100))
    sched.add_request(req("b", 264, first=1000))
    assert step(sched) == [("a", 200, False)]
    assert step(sched) == [("a", 64, True), ("b", 136, False)]
    assert step(sched) == [("a", 1, True), ("b", 128, True)]
    preempted_at = None
    for i in range(40):
        out = sched.schedule()
        if out.preempted:
            preempted_at = i
            assert [r.request_id for r in out.preempted] == ["b"]
            assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 1)]
        sampling = [s.request for s in out.scheduled if s.samples]
        sched.on_step_done(out)
        for r in sampling:
            r.append_token(7)
        if preempted_at is not None:
            break
    b = sched.requests["b"]
    assert preempted_at is not None and b.num_computed_tokens == 0 and b.num_tokens > 264
    for rid in list(sched.requests):
        sched.abort_request(rid)
    assert_pools_full(kv)


def test_config_validates_and_folds_the_cap_into_the_chunk():
    with pytest.raises(ValueError):
        SchedulerConfig(max_num_prefill_tokens=0)
    assert SchedulerConfig(max_num_batched_tokens=2048, max_num_prefill_tokens=512).prefill_chunk == 512
    assert SchedulerConfig(max_num_batched_tokens=256, max_num_prefill_tokens=512).prefill_chunk == 256
    assert SchedulerConfig(max_num_batched_tokens=2048).prefill_chunk == 2048


def test_cli_flag_defaults_by_device_and_zero_turns_it_off():
    parser = build_parser()
    cfg = lambda *argv: engine_config_from_args(parser.parse_args(["serve", "--model", "m", *argv])).scheduler
    assert cfg().max_num_prefill_tokens == CPU_DEFAULT_MAX_NUM_PREFILL_TOKENS
    assert cfg("--device", "cuda").max_num_prefill_tokens is None
    assert cfg("--max-num-prefill-tokens", "0").max_num_prefill_tokens is None
    assert cfg("--max-num-prefill-tokens", "1024", "--device", "cuda").max_num_prefill_tokens == 1024
    assert cfg().max_num_batched_tokens == 2048  # the step budget keeps its default and meaning
    with pytest.raises(ValueError):
        cfg("--max-num-prefill-tokens", "-1")


def test_a_lone_request_is_not_capped_and_the_cap_returns_with_company():
    # Alone on the server nothing waits behind a long prompt: it gets the whole step budget. Once a
    # second request arrives the cap bounds the prompt tokens again (and the chunk of each request).
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=2048, max_num_prefill_tokens=256)
    sched.add_request(req("lone", 1300, first=2000))
    assert step(sched) == [("lone", 1300, True)]
    sched.add_request(req("late", 600, first=4000))
    assert step(sched) == [("lone", 1, True), ("late", 256, False)]
    assert step(sched) == [("lone", 1, True), ("late", 256, False)]
    assert step(sched) == [("lone", 1, True), ("late", 88, True)]


def test_lone_long_prompt_chunks_by_the_budget_then_by_the_cap_when_joined():
    sched, _ = make(max_num_seqs=32, max_num_batched_tokens=1024, max_num_prefill_tokens=256)
    sched.add_request(req("lone", 3000, first=2000))
    assert step(sched) == [("lone", 1024, False)]
    sched.add_request(req("queued", 40, first=6000))
    # Two requests now: the unfinished prompt goes first (FCFS), capped; the newcomer gets nothing.
    assert step(sched) == [("lone", 256, False)]
    assert step(sched) == [("lone", 256, False)]
