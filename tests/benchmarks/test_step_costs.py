"""benchmarks.step_costs on a fake-model engine: only pure decode steps count, stages add up, wrappers go away."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "engine"))  # engine_fakes

from engine_fakes import echo_engine  # noqa: E402

from benchmarks.probes.step_costs import STAGES, measure  # noqa: E402


def test_measure_times_decode_steps_and_restores_the_engine():
    engine = echo_engine(128, 512, 4, 16)
    seen = []
    real_step = engine.step

    def step():
        outs = real_step()
        seen.append(len(outs))
        return outs

    engine.step = step
    r = measure(engine, batch=4, steps=5, prompt_len=10, vocab=(2, 90))
    assert r["batch"] == 4 and r["steps"] == 5
    # 40 prompt tokens at 16 per step: three steps carry prefill (the third one d's last 9 tokens
    # beside three decodes) and are skipped; then five pure decode steps.
    assert seen == [1, 3, 4] + [4] * 5
    assert set(r["stages_ms_median"]) == set(STAGES) | {"other"}
    assert all(v >= 0 for k, v in r["stages_ms_median"].items() if k != "other")
    assert sum(r["share"].values()) == pytest.approx(1.0)
    assert not engine.scheduler.requests and engine.kv.usage == 0.0  # aborted, blocks back
    for path, method in STAGES.values():  # the instance wrappers are gone
        obj = engine
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part)
        assert method not in vars(obj)
