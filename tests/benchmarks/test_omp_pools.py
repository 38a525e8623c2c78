"""benchmarks.omp_pools on a fake-model engine: rounds alternate, the helper thread holds its pool during (b) only."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repo root holds `benchmarks`
sys.path.insert(0, str(ROOT / "tests" / "engine"))  # engine_fakes

from engine_fakes import echo_engine  # noqa: E402

from benchmarks.omp_pools import run_rounds  # noqa: E402


def test_rounds_alternate_and_the_second_pool_lives_only_during_its_runs():
    engine = echo_engine(64, 256, 2, 32)
    helper_alive_at_step: list[bool] = []
    real_step = engine.step

    def step():
        helper_alive_at_step.append(any(t.name == "second-omp-pool" for t in threading.enumerate()))
        return real_step()

    engine.step = step
    ops: list[str] = []
    r = run_rounds(engine, rounds=2, tokens=4, prompt_len=6, parallel_op=lambda: ops.append("op"), vocab=(2, 90))
    assert ops == ["op", "op"]  # once per two-pool run
    assert len(r["one_pool"]["runs"]) == 2 and len(r["two_pools"]["runs"]) == 2
    assert all(run["wall_ms"] >= 0 and run["cpu_ms"] >= 0 for k in ("one_pool", "two_pools") for run in r[k]["runs"])
    # 4 steps per run (prefill + 3 decodes), runs alternate alone / with the helper.
    assert helper_alive_at_step == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4
    assert not any(t.name == "second-omp-pool" for t in threading.enumerate())
    assert not engine.scheduler.requests
