"""Sampler and SamplingState: each sampling parameter's effect, seeds, logprobs, constraints, validation."""

import math

import pytest
import torch

from gemmaserve.engine.sampler import SampledToken, Sampler, SamplingError, SamplingState
from gemmaserve.types import InvalidRequestError, SamplingParams

V = 64
EOS = [1]


def state(prompt=(), **kw) -> SamplingState:
    return SamplingState(SamplingParams(**kw), list(prompt), V, EOS)


def rand_logits(n: int, seed: int = 0, v: int = V) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 3  # [N, V]


def draw_many(sampler: Sampler, row: torch.Tensor, m: int = 4000, **kw) -> torch.Tensor:
    """m independent draws from one distribution, as one batch of m identical rows -> counts [V]."""
    states = [state(**kw) for _ in range(m)]
    toks = sampler.sample(row.expand(m, -1).clone(), states, [[] for _ in range(m)])
    return torch.bincount(torch.tensor([t.token_id for t in toks]), minlength=row.numel())


def probs_logits(p: list[float]) -> torch.Tensor:
    """Logits [V] whose softmax is `p` on the first ids and ~0 elsewhere."""
    row = torch.full((V,), -1e4)
    row[: len(p)] = torch.tensor(p).log()
    return row


def test_greedy_is_exact_argmax():
    logits = rand_logits(8)
    out = Sampler(V, seed=0).sample(logits, [state(temperature=0.0) for _ in range(8)], [[]] * 8)
    assert [t.token_id for t in out] == logits.argmax(-1).tolist()
    assert all(t.logprob is None and t.top == [] for t in out)


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0), dict(temperature=1e-7)])
def test_degenerate_truncation_equals_greedy(kw):
    logits = rand_logits(16, seed=1)
    out = Sampler(V, seed=0).sample(logits, [state(**kw) for _ in range(16)], [[]] * 16)
    assert [t.token_id for t in out] == logits.argmax(-1).tolist()


def test_temperature_one_matches_softmax_and_temperature_reshapes_it():
    sampler = Sampler(V, seed=123)
    row = probs_logits([0.5, 0.3, 0.15, 0.05])
    freq = draw_many(sampler, row)[:4].float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    hot = draw_many(sampler, row, temperature=2.0)[:4].float() / 4000
    expected = torch.softmax(row[:4] / 2.0, -1)  # flatter: ~[0.38, 0.29, 0.21, 0.12]
    assert torch.allclose(hot, expected, atol=0.03)
    assert draw_many(sampler, row)[4:].sum() == 0  # ~zero-probability ids never drawn


def test_top_k_keeps_exactly_k_renormalised():
    row = probs_logits([0.4, 0.3, 0.2, 0.1])
    counts = draw_many(Sampler(V, seed=5), row, top_k=2)
    assert counts[2:].sum() == 0 and counts[0] > 0 and counts[1] > 0
    assert abs(counts[0].item() / 4000 - 0.4 / 0.7) < 0.03


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    row = probs_logits([0.5, 0.3, 0.15, 0.05])
    counts = draw_many(Sampler(V, seed=6), row, top_p=0.8)  # 0.5 + 0.3 reach 0.8
    assert counts[2:].sum() == 0 and counts[1] > 0
    counts = draw_many(Sampler(V, seed=6), row, top_p=0.81)  # needs the third token too
    assert counts[3:].sum() == 0 and counts[2] > 0


def test_min_p_scales_with_the_top_probability():
    row = probs_logits([0.5, 0.3, 0.15, 0.05])
    counts = draw_many(Sampler(V, seed=7), row, min_p=0.5)  # keep p >= 0.25
    assert counts[2:].sum() == 0 and counts[1] > 0
    counts = draw_many(Sampler(V, seed=7), row, min_p=0.2)  # keep p >= 0.1
    assert counts[3:].sum() == 0 and counts[2] > 0


def test_top_k_with_top_p_and_min_p_combined_on_the_sort_path():
    # top_k=0 on one row forces the full-sort path for the group; results stay inside each row's set.
    row = probs_logits([0.35, 0.3, 0.2, 0.1, 0.05])
    states = [state(top_k=3, top_p=0.9), state(top_p=0.6), state(top_k=4, min_p=0.5)]
    sampler = Sampler(V, seed=8)
    seen = [set(), set(), set()]
    for _ in range(300):
        out = sampler.sample(row.expand(3, -1).clone(), states, [[], [], []])
        for j, t in enumerate(out):
            seen[j].add(t.token_id)
    assert seen == [{0, 1, 2}, {0, 1}, {0, 1, 2}]


def test_frequency_and_presence_penalties_change_exactly_the_seen_logits():
    logits = rand_logits(2, seed=2)
    s = [state(frequency_penalty=0.5, presence_penalty=0.25), state()]
    out_ids = [[3, 3, 7, 3], [3]]
    got = Sampler(V).process(logits.clone(), s, out_ids)
    want = logits.clone()
    want[0, 3] -= 0.5 * 3 + 0.25
    want[0, 7] -= 0.5 * 1 + 0.25
    assert torch.equal(got, want)


def test_penalty_counts_follow_the_growing_output():
    s = state(frequency_penalty=1.0)
    sampler = Sampler(V)
    logits = torch.zeros(1, V)
    out = [5]
    assert sampler.process(logits.clone(), [s], [out])[0, 5].item() == -1.0
    out += [5, 6]
    got = sampler.process(logits.clone(), [s], [out])[0]
    assert got[5].item() == -2.0 and got[6].item() == -1.0 and got[7].item() == 0.0


def test_repetition_penalty_divides_positive_multiplies_negative_over_prompt_and_output():
    logits = torch.zeros(1, V)
    logits[0, 2], logits[0, 4], logits[0, 9], logits[0, 10] = 3.0, -3.0, 2.0, 5.0
    s = state(prompt=[2, 4, 2], repetition_penalty=1.5)
    got = Sampler(V).process(logits.clone(), [s], [[9, 9]])
    want = logits.clone()
    want[0, 2], want[0, 4], want[0, 9] = 2.0, -4.5, 2.0 / 1.5  # 10 was never seen
    assert torch.equal(got, want)


def test_logit_bias_is_added_and_extremes_ban_or_force():
    logits = rand_logits(1, seed=3)
    top = logits[0].argmax().item()
    got = Sampler(V).process(logits.clone(), [state(logit_bias={top: -2.5, 0: 1.0})], [[]])
    want = logits.clone()
    want[0, top] -= 2.5
    want[0, 0] += 1.0
    assert torch.equal(got, want)
    banned = Sampler(V).sample(logits, [state(temperature=0.0, logit_bias={top: -100.0})], [[]])[0]
    assert banned.token_id == logits[0].topk(2).indices[1].item()
    # Gemma's logits are soft-capped to (-30, 30): +100 outweighs any of them.
    forced = draw_many(Sampler(V, seed=1), rand_logits(1, seed=4)[0] * 5, m=500, logit_bias={17: 100.0})
    assert forced[17].item() == 500


def test_fast_path_leaves_caller_logits_untouched():
    logits = rand_logits(3, seed=4)
    before = logits.clone()
    Sampler(V, seed=0).sample(logits, [state(), state(frequency_penalty=1.0), state(logit_bias={1: 5.0})], [[2], [2], [2]])
    assert torch.equal(logits, before)


def _seeded_run(position: int, mates: list[SamplingState], steps: int = 15) -> list[int]:
    """Tokens of a seed=1234 request placed at `position` among `mates`, logits fixed per step."""
    me = state(seed=1234, temperature=1.3, top_p=0.95)
    sampler = Sampler(V, seed=position * 7 + len(mates))
    tokens = []
    outs = [[] for _ in range(len(mates) + 1)]
    for step in range(steps):
        states = mates[:position] + [me] + mates[position:]
        logits = rand_logits(len(states), seed=1000 + step)
        logits[position] = rand_logits(1, seed=step)[0]  # my row is the same in every run
        res = sampler.sample(logits, states, outs)
        tokens.append(res[position].token_id)
        for o, r in zip(outs, res):
            o.append(r.token_id)
    return tokens


def test_seeded_request_is_independent_of_batch_mates_and_position():
    alone = _seeded_run(0, [])
    mates = [state(), state(seed=99), state(temperature=0.0), state(top_k=3), state(frequency_penalty=1.0)]
    assert _seeded_run(0, mates) == alone
    assert _seeded_run(3, mates) == alone
    assert _seeded_run(5, mates) == alone
    assert _seeded_run(1, [state(top_k=0, top_p=1.0)]) == alone  # a mate on the untruncated path
    assert len(set(alone)) > 3  # really sampling, not collapsing to greedy


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = rand_logits(1, seed=9).expand(4, -1).clone()
    states = [state(seed=7), state(seed=7), state(seed=8), state(seed=7, top_k=0)]

    def run(sts):
        sampler = Sampler(V)
        return [[t.token_id for t in sampler.sample(logits, sts, [[]] * 4)] for _ in range(20)]

    seq = list(zip(*run(states)))
    assert seq[0] == seq[1] == seq[3]
    assert seq[0] != seq[2]
    assert list(zip(*run([state(seed=7) for _ in range(4)])))[0] == seq[0]  # fresh states replay


def test_unseeded_sampler_seed_makes_runs_reproducible():
    logits = rand_logits(4, seed=11)
    a = [t.token_id for t in Sampler(V, seed=3).sample(logits, [state() for _ in range(4)], [[]] * 4)]
    b = [t.token_id for t in Sampler(V, seed=3).sample(logits, [state() for _ in range(4)], [[]] * 4)]
    assert a == b


def test_logprobs_are_the_model_distribution_and_top_is_sorted():
    logits = rand_logits(3, seed=12)
    states = [state(logprobs=5, temperature=0.0), state(logprobs=0, temperature=0.3, frequency_penalty=2.0), state()]
    out = Sampler(V, seed=0).sample(logits, states, [[], [int(logits[1].argmax())], []])
    ref = torch.log_softmax(logits, -1)
    t0 = out[0]
    assert t0.logprob == pytest.approx(ref[0, t0.token_id].item(), abs=1e-6)
    vals, ids = ref[0].topk(5)
    assert [i for i, _ in t0.top] == ids.tolist()
    assert [lp for _, lp in t0.top] == pytest.approx(vals.tolist(), abs=1e-6)
    assert all(a[1] >= b[1] for a, b in zip(t0.top, t0.top[1:]))
    # Before temperature and penalties: still the raw log_softmax value.
    assert out[1].logprob == pytest.approx(ref[1, out[1].token_id].item(), abs=1e-6)
    assert out[1].top == []
    assert out[2].logprob is None and out[2].top == []


def test_twenty_top_logprobs():
    logits = rand_logits(1, seed=13)
    out = Sampler(V).sample(logits, [state(logprobs=20)], [[]])[0]
    assert len(out.top) == 20 and len({i for i, _ in out.top}) == 20
    assert sum(math.exp(lp) for _, lp in out.top) < 1.0


class AllowOnly:
    """A TokenConstraint allowing a fixed id set; records the output ids it was shown."""

    def __init__(self, allowed):
        self.allowed = list(allowed)
        self.seen = []

    def mask_logits(self, output_token_ids, logits):
        self.seen.append(list(output_token_ids))
        keep = logits[self.allowed].clone()
        logits.fill_(float("-inf"))
        logits[self.allowed] = keep


def test_constraints_mask_before_sampling_and_see_the_output():
    logits = rand_logits(2, seed=14)
    c0, c1 = AllowOnly([3, 5]), AllowOnly([10, 11, 12])
    states = [state(temperature=0.0, constraints=[c0]), state(constraints=[c1], logprobs=1)]
    sampler = Sampler(V, seed=1)
    out = sampler.sample(logits, states, [[4, 4], []])
    assert out[0].token_id == (3 if logits[0, 3] > logits[0, 5] else 5)
    assert out[1].token_id in (10, 11, 12)
    assert c0.seen == [[4, 4]] and c1.seen == [[]]
    # Logprobs stay the unconstrained model distribution.
    assert out[1].logprob == pytest.approx(torch.log_softmax(logits[1], -1)[out[1].token_id].item(), abs=1e-6)
    for _ in range(50):
        assert sampler.sample(logits, states, [[4, 4], []])[1].token_id in (10, 11, 12)


def test_constraint_that_allows_nothing_raises_naming_the_row():
    states = [state(), state(constraints=[AllowOnly([])])]
    with pytest.raises(SamplingError) as err:
        Sampler(V).sample(rand_logits(2), states, [[], []])
    assert err.value.row_indices == [1]
    assert "allow no next token" in str(err.value)


def test_min_tokens_suppresses_eos_and_stop_ids_until_reached():
    logits = torch.zeros(1, V)
    logits[0, 1], logits[0, 40], logits[0, 20] = 10.0, 9.0, 1.0  # eos best, stop id 40 next
    s = state(temperature=0.0, min_tokens=2, stop_token_ids=[40])
    sampler = Sampler(V)
    assert sampler.sample(logits, [s], [[]])[0].token_id == 20
    assert sampler.sample(logits, [s], [[20]])[0].token_id == 20
    assert sampler.sample(logits, [s], [[20, 20]])[0].token_id == 1
    s_ign = state(temperature=0.0, min_tokens=2, ignore_eos=True)
    assert sampler.sample(logits, [s_ign], [[]])[0].token_id == 1


def test_min_tokens_yields_to_a_constraint_that_only_allows_eos():
    s = state(temperature=0.0, min_tokens=5, constraints=[AllowOnly([1])])
    assert Sampler(V).sample(rand_logits(1), [s], [[]])[0].token_id == 1


def test_sampled_token_shape_and_empty_batch():
    assert Sampler(V).sample(torch.zeros(0, V), [], []) == []
    tok = Sampler(V).sample(rand_logits(1), [state(temperature=0.0)], [[]])[0]
    assert isinstance(tok, SampledToken) and isinstance(tok.token_id, int)
    with pytest.raises(ValueError):
        Sampler(V).sample(rand_logits(2), [state()], [[]])


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1), ("temperature", 2.01), ("temperature", float("nan")),
        ("top_p", 0.0), ("top_p", 1.01), ("top_k", -1), ("top_k", 1.5),
        ("min_p", -0.01), ("min_p", 1.01),
        ("frequency_penalty", 2.5), ("frequency_penalty", -2.01),
        ("presence_penalty", -3.0), ("presence_penalty", 2.01),
        ("repetition_penalty", 0.0), ("repetition_penalty", 2.01),
        ("max_tokens", 0), ("min_tokens", -1),
    ],
)
def test_out_of_range_values_name_their_field(field, value):
    with pytest.raises(InvalidRequestError, match=field):
        state(**{field: value})


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(logprobs=21), "top_logprobs"), (dict(logprobs=-1), "top_logprobs"),
        (dict(logit_bias={V: 1.0}), "logit_bias"), (dict(logit_bias={-1: 1.0}), "logit_bias"),
        (dict(logit_bias={"5": 1.0}), "logit_bias"), (dict(logit_bias={5: 100.5}), "logit_bias"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"), (dict(stop=[""]), "stop"),
        (dict(stop_token_ids=[V]), "stop_token_ids"), (dict(max_tokens=3, min_tokens=4), "min_tokens"),
        (dict(seed="x"), "seed"),
    ],
)
def test_invalid_requests(kw, needle):
    with pytest.raises(InvalidRequestError, match=needle):
        state(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0.0), dict(temperature=2.0), dict(top_p=1.0), dict(top_k=0), dict(min_p=1.0),
        dict(frequency_penalty=-2.0, presence_penalty=2.0), dict(repetition_penalty=2.0),
        dict(logit_bias={0: -100, V - 1: 100}), dict(logprobs=0), dict(logprobs=20),
        dict(stop=["a", "b", "c", "d"]), dict(max_tokens=None), dict(seed=-5), dict(seed=2**70),
    ],
)
def test_edge_values_are_accepted(kw):
    s = state(**kw)
    out = Sampler(V, seed=0).sample(rand_logits(1), [s], [[]])
    assert 0 <= out[0].token_id < V


def test_large_vocab_top_p_candidates_and_full_sort_fallback_agree():
    big = 4096  # above the 1024-candidate topk shortcut
    peaked = rand_logits(1, seed=20, v=big)[0] * 2  # its top_p set fits in 1024 candidates
    # Near-flat and decreasing with the id: its top_p set (~3690 ids) does not: full sort.
    flat = -torch.arange(big, dtype=torch.float32) * 1e-4

    def run(with_flat_mate: bool) -> list[int]:
        me = SamplingState(SamplingParams(seed=5, top_p=0.9), [], big, EOS)
        mate = SamplingState(SamplingParams(top_p=0.9), [], big, EOS)
        sampler = Sampler(big, seed=0)
        toks = []
        for _ in range(30):
            rows = [peaked, flat] if with_flat_mate else [peaked]
            sts = [me, mate] if with_flat_mate else [me]
            toks.append(sampler.sample(torch.stack(rows), sts, [[]] * len(sts))[0].token_id)
        return toks

    assert run(False) == run(True)
    # The flat row really samples from its whole top_p prefix, beyond the candidate slice.
    m = 300
    states = [SamplingState(SamplingParams(top_p=0.9), [], big, EOS) for _ in range(m)]
    out = Sampler(big, seed=1).sample(flat.expand(m, -1).clone(), states, [[]] * m)
    n_keep = int((torch.cumsum(torch.softmax(flat, -1), -1) < 0.9).sum()) + 1
    drawn = [t.token_id for t in out]
    assert 3000 < max(drawn) < n_keep


def test_middle_candidate_slice_is_exact():
    big = 4096
    # 300 equally likely ids in a near-flat decreasing run: the top_p=0.5 set (150 ids) needs
    # more than 64 candidates but fits in 1024.
    row = torch.full((big,), -50.0)
    row[:300] = -torch.arange(300, dtype=torch.float32) * 1e-5
    m = 400
    states = [SamplingState(SamplingParams(top_p=0.5), [], big, EOS) for _ in range(m)]
    drawn = [t.token_id for t in Sampler(big, seed=2).sample(row.expand(m, -1).clone(), states, [[]] * m)]
    assert 120 < max(drawn) < 150 and min(drawn) >= 0
