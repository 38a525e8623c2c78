"""Steps in which no request samples (a prompt longer than the prefill cap, alone) on the bf16 CPU path."""

import pytest

from gemmaserve import LLM, SamplingParams
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.types import FinishReason


@pytest.fixture(scope="module")
def demo(demo_dir):
    return demo_dir


@pytest.mark.skipif(KernelPolicy.default().lib is None, reason="the bf16 CPU kernels did not build")
def test_a_prompt_longer_than_the_cap_alone_is_prefilled_in_chunks_on_bf16(demo):
    # 20 prompt tokens under an 8-token prefill cap: steps of 8, 8 and 4 tokens, only the last samples.
    llm = LLM(model=str(demo), dtype="bfloat16", max_model_len=64, max_num_prefill_tokens=8)
    out = llm.generate([list(range(2, 22))], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))[0]
    assert out.finish_reason is FinishReason.LENGTH
    assert len(out.token_ids) == 3
    assert all(p.num_free == p.num_blocks for p in llm.engine.kv.pools.values())


def test_chunked_under_the_cap_equals_unchunked_in_fp32(demo):
    # fp32 takes the torch MoE path: chunking under the cap must not change a single token.
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    prompts = [list(range(2, 22)), list(range(40, 47)), list(range(60, 90))]
    whole = LLM(model=str(demo), dtype="float32", max_model_len=64).generate(prompts, params)
    capped = LLM(model=str(demo), dtype="float32", max_model_len=64, max_num_prefill_tokens=8)
    got = capped.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in whole]
    assert [o.finish_reason for o in got] == [FinishReason.LENGTH] * 3
    assert all(p.num_free == p.num_blocks for p in capped.engine.kv.pools.values())
