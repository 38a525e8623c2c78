"""Start-up warm-up: runs the serving shapes, leaves nothing behind, and sizes the prompt cap from the
measured prefill speed."""

import pytest

from gemmaserve import SamplingParams
from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine import warmup
from gemmaserve.engine.engine import Engine
from gemmaserve.model.config import FULL, SLIDING


def test_adaptive_cap_fits_the_target_step_time():
    assert warmup.adaptive_cap(2000.0, 512) == 512  # fast machine: the configured cap stays
    assert warmup.adaptive_cap(600.0, 512) == 256  # 300 tokens fit in 0.5 s -> whole 64s
    assert warmup.adaptive_cap(150.0, 512) == warmup.MIN_ADAPTIVE_CAP  # never below the floor
    assert warmup.adaptive_cap(150.0, 64) == 64  # nor above what was configured


def _engine(tiny, cap):
    path, model, config, tok = tiny
    cfg = EngineConfig(
        model=str(path), dtype="float32", max_model_len=256,
        cache=CacheConfig(block_size=4, num_blocks={SLIDING: 256, FULL: 256}),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, max_num_prefill_tokens=cap),
    )
    return Engine(model, config, cfg, tok)


@pytest.mark.parametrize("target_s,expect", [(1e-9, warmup.MIN_ADAPTIVE_CAP), (1e9, 192)])
def test_warm_up_runs_shapes_frees_blocks_and_adapts_the_cap(tiny_fp32, monkeypatch, target_s, expect):
    monkeypatch.setattr(warmup, "TARGET_PREFILL_STEP_S", target_s)
    engine = _engine(tiny_fp32, cap=192)
    report = warmup.warm_up(engine, adapt_cap=True)
    assert report.prefill_tokens == 192 and report.prefill_s > 0 and report.cold_prefill_s > 0
    assert report.prefill_cap == expect == engine.scheduler.config.max_num_prefill_tokens
    assert not engine.has_unfinished_requests()
    assert all(p.num_free == p.num_blocks for p in engine.kv.pools.values())
    # Serving goes on as usual afterwards.
    engine.add_request("r", [5, 6, 7], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert len(outs[-1].token_ids) == 3


def test_no_adapting_without_a_cap_or_when_asked_not_to(tiny_fp32, monkeypatch):
    monkeypatch.setattr(warmup, "TARGET_PREFILL_STEP_S", 1e-9)
    engine = _engine(tiny_fp32, cap=None)
    assert warmup.warm_up(engine, adapt_cap=True).prefill_cap is None
    engine = _engine(tiny_fp32, cap=256)
    assert warmup.warm_up(engine, adapt_cap=False).prefill_cap == 256


def test_from_config_warms_up_only_when_configured(demo_dir):
    base = dict(model=str(demo_dir), dtype="float32", max_model_len=128,
                cache=CacheConfig(block_size=4, num_blocks={SLIDING: 128, FULL: 128}))
    assert Engine.from_config(EngineConfig(**base)).warmup_report is None
    report = Engine.from_config(EngineConfig(**base, warmup=True)).warmup_report
    assert report is not None and report.prefill_tokens == 120  # max_model_len - 8 < the 2048 budget
