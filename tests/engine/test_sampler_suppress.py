"""Sampler suppress_token_ids: a fixed -inf mask for every request (Gemma's <pad>, <bos>, media markers)."""

import json

import pytest
import torch
from engine_fakes import PagedEchoModel, fake_config

from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.demo import write_demo_model
from gemmaserve.engine.engine import Engine
from gemmaserve.engine.sampler import Sampler, SamplingError, SamplingState
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.tokenizer import Tokenizer
from gemmaserve.types import SamplingParams

V = 64
SUPPRESS = [0, 2, 60]


def st(**kw) -> SamplingState:
    return SamplingState(SamplingParams(**kw), [], V, [1])


def favouring_suppressed(n: int, seed: int) -> torch.Tensor:
    """Random logits [n, V] where the suppressed ids dominate (greedy and sampling would pick them)."""
    logits = torch.randn(n, V, generator=torch.Generator().manual_seed(seed))  # [n, V]
    logits[:, SUPPRESS] += 20.0
    return logits


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=1.5, top_k=5, top_p=0.9),
                                dict(temperature=1.0, logit_bias={0: 100.0, 2: 100.0}),
                                dict(temperature=1.0, repetition_penalty=0.5, presence_penalty=-2.0)])
def test_suppressed_ids_are_never_sampled(kw):
    sampler = Sampler(V, seed=0, suppress_token_ids=SUPPRESS + [V + 5])  # an id past the width is ignored
    for seed in range(20):
        logits = favouring_suppressed(16, seed)
        before = logits.clone()
        out = sampler.sample(logits, [st(**kw) for _ in range(16)], [[0, 2, 60]] * 16)
        assert not {t.token_id for t in out} & set(SUPPRESS)
        assert torch.equal(logits, before)  # the caller's logits are not edited


def test_without_suppress_ids_the_same_logits_pick_them():
    out = Sampler(V, seed=0).sample(favouring_suppressed(4, 0), [st(temperature=0.0) for _ in range(4)], [[]] * 4)
    assert {t.token_id for t in out} <= set(SUPPRESS)


def test_logprobs_stay_the_model_distribution():
    logits = favouring_suppressed(1, 3)
    out = Sampler(V, seed=0, suppress_token_ids=SUPPRESS).sample(logits, [st(temperature=0.0, logprobs=3)], [[]])
    raw = torch.log_softmax(logits[0], dim=-1)  # [V]
    masked = logits[0].clone()
    masked[SUPPRESS] = float("-inf")
    assert out[0].token_id == int(masked.argmax())
    assert [i for i, _ in out[0].top] == raw.topk(3).indices.tolist()
    assert out[0].logprob == pytest.approx(float(raw[out[0].token_id]))


def test_constraint_allowing_only_suppressed_ids_fails_loudly():
    class OnlyPad:
        def mask_logits(self, ids, logits):
            keep = logits[0].item()
            logits.fill_(float("-inf"))
            logits[0] = keep

    with pytest.raises(SamplingError):
        Sampler(V, seed=0, suppress_token_ids=SUPPRESS).sample(torch.zeros(1, V), [st(constraints=[OnlyPad()])], [[]])


def test_engine_takes_the_set_from_the_tokenizer(tmp_path):
    d = write_demo_model(tmp_path / "m", "tiny", write_weights=False)
    gen = json.loads((d / "generation_config.json").read_text())
    gen["suppress_tokens"] = [300]  # a checkpoint's own list adds to the by-text set
    (d / "generation_config.json").write_text(json.dumps(gen))
    tok = Tokenizer.from_dir(d)
    by_text = [tok.token_to_id(t) for t in ("<pad>", "<bos>", "<|image>", "<image|>", "<|audio>", "<audio|>",
                                            "<|image|>", "<|audio|>", "<|video|>")]
    assert tok.suppress_token_ids == sorted(set(by_text) | {300})

    class FavourSuppressed(PagedEchoModel):
        def forward(self, batch, kv_caches):
            logits = super().forward(batch, kv_caches)  # [R, V]
            logits[:, tok.suppress_token_ids] = 50.0
            return logits

    cfg = fake_config(vocab=tok.vocab_size)
    ec = EngineConfig(dtype="float32", cache=CacheConfig(block_size=4, num_blocks={SLIDING: 32, FULL: 32}),
                      scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32))
    engine = Engine(FavourSuppressed(cfg), cfg, ec, tok)
    engine.add_request("g", [5, 6, 7], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    engine.add_request("s", [5, 6], SamplingParams(max_tokens=6, temperature=1.0, seed=1, ignore_eos=True))
    outs = {}
    while engine.has_unfinished_requests():
        outs.update({o.request_id: o for o in engine.step() if o.finished})
    for out in outs.values():
        assert len(out.token_ids) == 6 and not set(out.token_ids) & set(tok.suppress_token_ids)


def test_bad_suppress_tokens_in_generation_config_is_an_error(tmp_path):
    d = write_demo_model(tmp_path / "m", "tiny", write_weights=False)
    gen = json.loads((d / "generation_config.json").read_text())
    gen["suppress_tokens"] = ["<pad>"]
    (d / "generation_config.json").write_text(json.dumps(gen))
    with pytest.raises(ValueError, match="suppress_tokens"):
        Tokenizer.from_dir(d)
