"""Smoke test of benchmarks/probes/sampler_bench.py: runs every case on a tiny vocabulary and prints JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sampler_bench_prints_one_json_summary():
    proc = subprocess.run(
        [sys.executable, "benchmarks/probes/sampler_bench.py", "--vocab", "256", "--batches", "1", "3",
         "--iters", "2", "--prompt-len", "8", "--output-len", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["benchmark"] == "sampler_step" and summary["vocab"] == 256
    assert set(summary["results"]) == {"greedy", "fast_plain", "fast_gemma_defaults", "fast_top_p_only",
                                       "penalties", "seeded_logprobs"}
    for case in summary["results"].values():
        assert set(case) == {"batch_1", "batch_3"}
        assert all(v["min_ms"] > 0 and v["median_ms"] >= v["min_ms"] for v in case.values())
