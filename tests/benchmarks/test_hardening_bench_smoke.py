"""Smoke runs of the hardening benchmarks on the tiny demo model: the isolation benchmark and the
soak each start a real `gemmaserve serve`, drive their hostile classes and print their JSON summary
(no timings asserted; the statuses and the idle-server checks are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(module: str, *argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_isolation_smoke(demo_dir):
    out = run("benchmarks.suite.isolation", "--model", str(demo_dir), "--streams", "2", "--max-tokens", "24",
              "--only", "surrogate_content,header_line_1mb")
    assert set(out["classes"]) == {"surrogate_content", "header_line_1mb"}
    assert out["all_handled_right"] is True
    assert out["quiet_p99_ms"] > 0 and all("ratio" in c for c in out["classes"].values())


def test_soak_smoke(demo_dir):
    out = run("benchmarks.probes.soak", "--model", str(demo_dir), "--rounds", "1", "--fuzz", "10",
              "--disconnects", "2")
    assert out["server_errors_5xx"] == 0 and out["no_response"] == 0
    assert out["hostile_wrong_status"] == {} and out["kv_leak"] is False
    assert out["counts"]["ordinary"] == {"200": 20} and len(out["rounds"]) == 1
