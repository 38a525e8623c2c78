"""LLM.generate greedy tokens on the tiny demo checkpoint equal transformers 5.23's generate, batched,
across the sliding window, with prefix-cache hits and with preemption by recompute."""

from __future__ import annotations

import pytest
import torch
from integ_server import one_torch_thread
from transformers import Gemma4ForConditionalGeneration

from gemmaserve import LLM, SamplingParams
from gemmaserve.demo import TEXT_CONFIGS, write_demo_model
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.types import FinishReason

WINDOW = TEXT_CONFIGS["tiny"]["sliding_window"]  # 16
# Top-1 must beat top-2 by this much in the reference logits for a token comparison to mean
# anything; fp32 reorderings between two implementations move logits by ~1e-5.
MIN_GAP = 1e-3
LOGPROB_ATOL = 1e-4

# (prompt length, max_tokens): short and long prompts, one longer than the window, and
# generations whose total length crosses the window (16) and twice the window.
SHAPES = [(5, 14), (23, 10), (11, 24), (40, 6), (2, 18)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _prompt(n: int, seed: int) -> list[int]:
    # ids 3..255 are plain byte/merge tokens of the demo vocab: no control or eos ids in prompts.
    body = torch.randint(3, 256, (n - 1,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [2] + body  # <bos> first, as every real prompt has


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("e2e_ref"), size="tiny")


@pytest.fixture(scope="module")
def cases():
    return [(_prompt(n, seed=100 + i), m) for i, (n, m) in enumerate(SHAPES)]


@pytest.fixture(scope="module")
def reference(demo, cases):
    """transformers' generate, one prompt at a time (no padding in the reference), eos disabled so
    every prompt runs its full max_tokens as ours does with ignore_eos."""
    ref = Gemma4ForConditionalGeneration.from_pretrained(str(demo), dtype=torch.float32).eval()
    ref.generation_config.eos_token_id = None
    out = []
    for ids, max_tokens in cases:
        with torch.no_grad():
            gen = ref.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_tokens,
                               min_new_tokens=max_tokens, return_dict_in_generate=True, output_logits=True,
                               pad_token_id=0)
        tokens = gen.sequences[0, len(ids):].tolist()
        logits = torch.stack(gen.logits)[:, 0].float()  # [T, V] raw logits of each step
        out.append((tokens, logits))
    return out


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=1)


def _check_against_reference(outs, cases, reference):
    for (ids, max_tokens), out, (ref_tokens, ref_logits) in zip(cases, outs, reference):
        assert len(ref_tokens) == max_tokens
        top2 = ref_logits.topk(2, dim=-1).values  # [T, 2]
        gaps = (top2[:, 0] - top2[:, 1]).tolist()
        assert min(gaps) > MIN_GAP, f"near-tied reference step: gaps {gaps}"
        assert out.prompt_token_ids == ids
        assert out.token_ids == ref_tokens, (len(ids), out.token_ids, ref_tokens)
        assert out.finish_reason is FinishReason.LENGTH
        # Our chosen-token logprobs are log_softmax of the same (soft-capped) logits.
        ref_lp = torch.log_softmax(ref_logits, dim=-1)  # [T, V]
        ours = torch.tensor([lp.logprob for lp in out.logprobs])
        expected = ref_lp[torch.arange(len(ref_tokens)), torch.tensor(ref_tokens)]
        torch.testing.assert_close(ours, expected, atol=LOGPROB_ATOL, rtol=0)


def _leak_free(llm: LLM) -> bool:
    return all(p.num_free == p.num_blocks for p in llm.engine.kv.pools.values())


def test_shapes_cross_the_sliding_window(cases):
    assert any(len(ids) > WINDOW for ids, _ in cases)
    assert any(len(ids) < WINDOW < len(ids) + m for ids, m in cases)
    assert any(len(ids) + m > 2 * WINDOW for ids, m in cases)


def test_batched_greedy_equals_transformers(demo, cases, reference):
    # A small step budget mixes chunked prefills with other requests' decodes in one batch.
    llm = LLM(model=str(demo), dtype="float32", max_model_len=128, block_size=4, max_num_batched_tokens=24,
              enable_prefix_caching=False)
    outs = llm.generate([ids for ids, _ in cases], [_greedy(m) for _, m in cases])
    _check_against_reference(outs, cases, reference)
    assert _leak_free(llm)


def test_prefix_cache_hits_equal_transformers(demo, cases, reference):
    llm = LLM(model=str(demo), dtype="float32", max_model_len=128, block_size=4, enable_prefix_caching=True)
    first = llm.generate([ids for ids, _ in cases], [_greedy(m) for _, m in cases])
    second = llm.generate([ids for ids, _ in cases], [_greedy(m) for _, m in cases])
    _check_against_reference(first, cases, reference)
    _check_against_reference(second, cases, reference)
    # Whole 4-token blocks of each prompt, less the last token that must be recomputed for logits.
    assert [o.num_cached_tokens for o in second] == [(len(ids) - 1) // 4 * 4 for ids, _ in cases]
    assert any(o.num_cached_tokens > WINDOW for o in second)
    assert _leak_free(llm)


def test_preemption_by_recompute_equals_transformers(demo, cases, reference):
    # 16 full-attention blocks of 4 tokens = 64 token slots; the five requests need 166 at the end.
    llm = LLM(model=str(demo), dtype="float32", max_model_len=64, block_size=4, max_num_batched_tokens=64,
              num_blocks={SLIDING: 64, FULL: 16}, enable_prefix_caching=False)
    outs = llm.generate([ids for ids, _ in cases], [_greedy(m) for _, m in cases])
    assert llm.engine.scheduler.num_preemptions > 0
    _check_against_reference(outs, cases, reference)
    assert _leak_free(llm)


def test_stream_deltas_add_up_through_preemption(demo, cases, reference):
    """What a streaming client sees: every update's new ids/text/logprobs, concatenated, are the
    final output, even for requests that were preempted and recomputed part way."""
    llm = LLM(model=str(demo), dtype="float32", max_model_len=64, block_size=4, max_num_batched_tokens=64,
              num_blocks={SLIDING: 64, FULL: 16}, enable_prefix_caching=True)
    engine = llm.engine
    for i, (ids, m) in enumerate(cases):
        engine.add_request(f"s{i}", ids, _greedy(m))
    ids_d: dict[str, list[int]] = {}
    text_d: dict[str, str] = {}
    lp_d: dict[str, list[int]] = {}
    finals = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            ids_d.setdefault(out.request_id, []).extend(out.new_token_ids)
            text_d[out.request_id] = text_d.get(out.request_id, "") + out.new_text
            lp_d.setdefault(out.request_id, []).extend(lp.token_id for lp in out.new_logprobs or [])
            if out.finished:
                finals[out.request_id] = out
    assert engine.scheduler.num_preemptions > 0
    for i, (ref_tokens, _) in enumerate(reference):
        rid = f"s{i}"
        assert ids_d[rid] == finals[rid].token_ids == ref_tokens
        assert lp_d[rid] == ref_tokens
        assert text_d[rid] == finals[rid].text
    assert _leak_free(llm)


@pytest.fixture(scope="module")
def prompt_reference(demo, cases):
    """transformers' logits over each whole prompt in one forward: row p predicts prompt token p + 1."""
    ref = Gemma4ForConditionalGeneration.from_pretrained(str(demo), dtype=torch.float32).eval()
    with torch.no_grad():
        return [torch.log_softmax(ref(torch.tensor([ids])).logits[0].float(), dim=-1) for ids, _ in cases]


@pytest.mark.parametrize("budget, max_tokens", [(24, 0), (64, 3)])
def test_prompt_logprobs_equal_transformers(demo, cases, prompt_reference, budget, max_tokens):
    # Chunked prefill (a 24-token budget splits the long prompts) and a warm prefix cache (the first
    # generate fills it; prompt logprobs must skip it); max_tokens=0 scores the prompt only.
    llm = LLM(model=str(demo), dtype="float32", max_model_len=128, block_size=4, max_num_batched_tokens=budget,
              enable_prefix_caching=True)
    llm.generate([ids for ids, _ in cases], [_greedy(2) for _ in cases])
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, prompt_logprobs=3)
    outs = llm.generate([ids for ids, _ in cases], [params for _ in cases])
    for (ids, _), out, ref_lp in zip(cases, outs, prompt_reference):
        assert out.num_cached_tokens == 0 and len(out.token_ids) == max_tokens
        assert out.finish_reason is FinishReason.LENGTH
        plp = out.prompt_logprobs
        assert len(plp) == len(ids) and plp[0] is None
        assert [lp.token_id for lp in plp[1:]] == ids[1:]
        expected = ref_lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        torch.testing.assert_close(torch.tensor([lp.logprob for lp in plp[1:]]), expected, atol=LOGPROB_ATOL, rtol=0)
        top = ref_lp[: len(ids) - 1].topk(3, dim=-1)
        assert [[t.token_id for t in lp.top] for lp in plp[1:]] == top.indices.tolist()
        torch.testing.assert_close(torch.tensor([[t.logprob for t in lp.top] for lp in plp[1:]]), top.values,
                                   atol=LOGPROB_ATOL, rtol=0)
    assert _leak_free(llm)


def test_prompt_logprobs_survive_preemption(demo, cases, prompt_reference, monkeypatch):
    import gemmaserve.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "PROMPT_LOGPROB_ROWS", 7)  # several log_softmax slices per chunk
    llm = LLM(model=str(demo), dtype="float32", max_model_len=64, block_size=4, max_num_batched_tokens=64,
              num_blocks={SLIDING: 64, FULL: 16}, enable_prefix_caching=False)
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True, prompt_logprobs=0) for _, m in cases]
    outs = llm.generate([ids for ids, _ in cases], params)
    assert llm.engine.scheduler.num_preemptions > 0
    for (ids, _), out, ref_lp in zip(cases, outs, prompt_reference):
        expected = ref_lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        got = torch.tensor([lp.logprob for lp in out.prompt_logprobs[1:]])
        torch.testing.assert_close(got, expected, atol=LOGPROB_ATOL, rtol=0)
        assert all(lp.top == [] for lp in out.prompt_logprobs[1:])
    assert _leak_free(llm)
