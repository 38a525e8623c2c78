"""Instruction-set tiers in one invocation: the offline throughput comparison (gemmaserve vs
transformers, optionally gemmaserve's deterministic mode) run once per tier in a child process capped
at that tier everywhere (gemmaserve's kernels, ATen, oneDNN: ops/cpu_isa.child_env), plus the machine
facts RESULTS.md wants (CPU model, flags, tier, read bandwidth).

    python -m benchmarks.suite.tiers --model DIR --tiers avx512bf16,avx512,avx2 -- --input-len 512 --output-len 64

Arguments after `--` go to benchmarks.suite.throughput. Each child takes the bench lock itself
(flock /tmp/gs-bench.lock), so tiers never overlap other benchmarks; ratios are within one child
(same tier, same minutes), never across children.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gemmaserve.ops import cpu_isa  # noqa: E402

LOCK = "/tmp/gs-bench.lock"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def bandwidth_gbs(model: str) -> float | None:
    """Read bandwidth as the roofline script measures it (under the bench lock)."""
    cmd = ["flock", LOCK, sys.executable, "-m", "benchmarks.suite.roofline", "--model", model]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        return json.loads(res.stdout)["bandwidth"]["best_gb_s"]
    except (ValueError, KeyError):
        return None


def run_tier(tier: cpu_isa.Tier, model: str, extra: list[str], timeout_s: int) -> dict:
    env = {**os.environ, **cpu_isa.child_env(tier)}
    cmd = ["flock", LOCK, sys.executable, "-m", "benchmarks.suite.throughput", "--model", model, *extra]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    out = {"tier": cpu_isa.NAMES[tier], "env": cpu_isa.child_env(tier), "wall_s": round(time.time() - t0, 1),
           "loadavg_after": os.getloadavg()}
    try:
        out["throughput"] = json.loads(res.stdout[res.stdout.index("{"):])
    except ValueError:
        out["error"] = res.stderr[-2000:]
    return out


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tiers", default="avx512bf16,avx512,avx2")
    p.add_argument("--timeout-s", type=int, default=600, help="per tier (each run must stay under 10 min)")
    p.add_argument("--no-bandwidth", action="store_true")
    args = p.parse_args(argv)
    flags = cpu_isa.cpu_flags()
    report = {
        "benchmark": "tiers",
        "cpu": cpu_model(),
        "detected_tier": cpu_isa.NAMES[cpu_isa.detect(flags)],
        "isa_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))),
        "nproc": os.cpu_count(),
        "bandwidth_gbs": None if args.no_bandwidth else bandwidth_gbs(args.model),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tiers": [run_tier(cpu_isa.parse(t), args.model, extra, args.timeout_s) for t in args.tiers.split(",")],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
