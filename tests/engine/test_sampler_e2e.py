"""Sampling through the whole engine on the tiny demo checkpoint: seeds survive batching, penalties and stops apply."""

import pytest
import torch

from gemmaserve import LLM, SamplingParams
from gemmaserve.types import FinishReason


@pytest.fixture(scope="module")
def llm(demo_dir):
    return LLM(model=str(demo_dir), dtype="float32", max_model_len=128, max_num_seqs=8, block_size=8)


def seeded(seed: int, n: int = 8) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=1.0, top_p=0.95, top_k=64, seed=seed, ignore_eos=True)


def test_seeded_request_gives_the_same_tokens_alone_and_in_a_batch(llm):
    alone = llm.generate("The cat", seeded(42))[0].token_ids
    mates = ["Hello there, how are you?", "Once upon a time", "abc"]
    batch = llm.generate(
        mates[:2] + ["The cat"] + mates[2:],
        [SamplingParams(max_tokens=6, ignore_eos=True), seeded(7), seeded(42),
         SamplingParams(max_tokens=9, temperature=0.7, frequency_penalty=1.0, ignore_eos=True)],
    )
    assert batch[2].token_ids == alone
    assert batch[1].token_ids != alone  # another seed, another prompt: really different draws
    assert llm.generate("The cat", seeded(43))[0].token_ids != alone


def test_logit_bias_forces_a_token_through_the_engine(llm):
    tid = 300
    out = llm.generate("The cat", SamplingParams(max_tokens=3, logit_bias={tid: 100.0}, ignore_eos=True))[0]
    assert out.token_ids == [tid] * 3


def test_presence_penalty_keeps_greedy_from_repeating(llm):
    plain = llm.generate("abc", SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0].token_ids
    penal = llm.generate("abc", SamplingParams(max_tokens=10, temperature=0.0, presence_penalty=2.0,
                                               frequency_penalty=2.0, ignore_eos=True))[0].token_ids
    assert len(set(plain)) < len(plain)  # the random tiny model loops when greedy
    assert len(set(penal)) > len(set(plain))


def test_logprobs_through_the_engine_are_sorted_and_bounded(llm):
    out = llm.generate("Hello", SamplingParams(max_tokens=4, logprobs=3, seed=1, ignore_eos=True))[0]
    assert len(out.logprobs) == 4
    for tok_id, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == tok_id and lp.logprob <= 0.0
        assert len(lp.top) == 3
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert lp.logprob <= lp.top[0].logprob + 1e-6
        assert sum(torch.tensor([t.logprob for t in lp.top]).exp().tolist()) <= 1.0 + 1e-5


def test_stop_string_ends_a_sampled_request(llm):
    free = llm.generate("The cat", seeded(5, 12))[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = llm.generate("The cat", SamplingParams(**{**seeded(5, 12).__dict__, "stop": [stop]}))[0]
    assert cut.finish_reason is FinishReason.STOP and cut.stop_reason == stop
    assert cut.text == free.text[: free.text.find(stop)]
