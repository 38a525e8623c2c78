"""Deterministic mode (--deterministic): a seeded or greedy request gets the same tokens and the same
logprobs, bit for bit in bf16, alone, in a batch of 32, with its prompt chunked, arriving beside running
decodes, and cold or from the prefix cache."""

import pytest
import torch

from gemmaserve import SamplingParams
from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine.engine import Engine
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.model.loader import load_model
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(KernelPolicy.default().lib is None, reason="deterministic mode runs on the CPU kernels")

PROMPT_LEN = 45  # longer than the tiny model's 16-token sliding window, not a whole number of blocks


@pytest.fixture(scope="module")
def bf16_model(demo_dir):
    # A model of its own: batch_invariant_ switches the module's kernels for good.
    model, config = load_model(demo_dir, dtype=torch.bfloat16)
    return demo_dir, model, config, Tokenizer.from_dir(demo_dir)


def _engine(tiny, deterministic=True, chunk=None, budget=512, prefix=True):
    path, model, config, tok = tiny
    cfg = EngineConfig(
        model=str(path), dtype="bfloat16", max_model_len=256, deterministic=deterministic,
        cache=CacheConfig(block_size=4, num_blocks={SLIDING: 1200, FULL: 1200}, enable_prefix_caching=prefix),
        scheduler=SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=budget, long_prefill_chunk=chunk),
    )
    return Engine(model, config, cfg, tok)


def _prompt(seed: int, n: int = PROMPT_LEN) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 500, (n,), generator=g).tolist()


def _params(seeded: bool) -> SamplingParams:
    if seeded:
        return SamplingParams(max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True, logprobs=2)
    return SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=2)


def _run(engine, joins: dict[int, list[tuple[str, list[int], SamplingParams]]]) -> dict:
    finals, step = {}, 0
    while step <= max(joins) or engine.has_unfinished_requests():
        for rid, ids, params in joins.get(step, []):
            engine.add_request(rid, ids, params)
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        step += 1
        assert step < 2000
    return finals


def _key(out) -> tuple:
    """Tokens and every logprob (chosen and alternatives) of one output: exact comparison."""
    return tuple(out.token_ids), tuple((lp.token_id, lp.logprob, tuple((a.token_id, a.logprob) for a in lp.top))
                                       for lp in out.logprobs)


def _others(n: int, seeded: bool) -> list[tuple[str, list[int], SamplingParams]]:
    # Batch mates of different lengths and sampling settings.
    return [(f"o{i}", _prompt(100 + i, 5 + 7 * i % 60), _params(seeded and i % 2 == 0)) for i in range(n)]


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_same_tokens_solo_batched_chunked_and_cached(bf16_model, seeded):
    target = ("t", _prompt(7), _params(seeded))
    solo = _key(_run(_engine(bf16_model), {0: [target]})["t"])

    # In a batch of 32, all arriving together (one prefill step, then 32-row decodes).
    batched = _run(_engine(bf16_model), {0: [*_others(31, seeded), target]})
    assert _key(batched["t"]) == solo

    # Arriving while 31 others decode (mixed prefill + decode steps), prompt in 8-token chunks.
    late = _run(_engine(bf16_model, chunk=8), {0: _others(31, seeded), 3: [target]})
    assert _key(late["t"]) == solo

    # A small step budget: prompt chunks of uneven sizes shared with other prompts.
    tight = _run(_engine(bf16_model, budget=24), {0: [*_others(5, seeded), target]})
    assert _key(tight["t"]) == solo

    # Prefix-cache hit: the same prompt again after it finished once.
    engine = _engine(bf16_model)
    _run(engine, {0: [("warm", target[1], target[2])]})
    cached = _run(engine, {0: [target]})["t"]
    assert cached.num_cached_tokens > 0
    assert _key(cached) == solo


def test_refused_with_int8_and_off_cpu():
    with pytest.raises(ValueError, match="int8"):
        EngineConfig(deterministic=True, quantization="int8")
    with pytest.raises(ValueError, match="cpu"):
        EngineConfig(deterministic=True, device="meta")
