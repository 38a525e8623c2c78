"""Same-invocation A/B of two gemmaserve trees (e.g. the previous main in a git worktree vs this one) on the
model-level headline cases: decode at 1 and 32 streams and a 512-token prefill, bench model, bf16, CPU
kernels on (each tree's default policy). Rounds alternate between the trees, each round a fresh process
running that tree's own decode benchmark; prints one JSON with per-tree medians and candidate/baseline
ratios (>1 = candidate faster), plus the machine it ran on.

    git worktree add /tmp/base 8e51d7b
    flock /tmp/gs-bench.lock python -m benchmarks.suite.ab_trees --base /tmp/base --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.machine import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Where each tree keeps its decode benchmark (it moved to probes/ with the shelves).
_SCRIPTS = ("benchmarks/probes/decode_bench.py", "benchmarks/decode_bench.py")


def _script(tree: Path) -> Path:
    for rel in _SCRIPTS:
        if (tree / rel).exists():
            return tree / rel
    raise FileNotFoundError(f"no decode benchmark in {tree}")


def run_tree(tree: Path, args: argparse.Namespace) -> dict:
    """One candidate-variant run of `tree`'s decode benchmark in a fresh process with `tree` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(_script(tree)), "--batches", args.batches, "--ctx", str(args.ctx), "--steps",
           str(args.steps), "--prefill", str(args.prefill), "--threads", str(args.threads), "--size", args.size]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: dict[str, list[dict]], cases: list[str]) -> dict:
    """Per tree and case the median over rounds (ms per step or per prefill, tok/s), and the ratios."""
    out: dict = {}
    for name, rs in runs.items():
        out[name] = {}
        for case in cases:
            key = "ms" if case.startswith("prefill") else "ms_per_step"
            out[name][case] = {"ms": statistics.median(r[case][key] for r in rs),
                               "tok_s": statistics.median(r[case]["tok_s"] for r in rs)}
    out["speedup_candidate_over_base"] = {
        case: round(out["base"][case]["ms"] / out["candidate"][case]["ms"], 3) for case in cases}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the baseline tree (a git worktree of the previous main)")
    p.add_argument("--candidate", default=str(REPO))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", default="bench")
    p.add_argument("--timeout", type=int, default=900)
    args = p.parse_args(argv)
    trees = {"base": Path(args.base).resolve(), "candidate": Path(args.candidate).resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    load_before = os.getloadavg()
    for i in range(args.rounds):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))  # alternate who goes first
        for name in order:
            runs[name].append(run_tree(trees[name], args))
            print(f"[ab_trees] round {i + 1} {name}: {json.dumps(runs[name][-1])}", file=sys.stderr, flush=True)
    cases = [f"b{b}" for b in args.batches.split(",") if b] + ([f"prefill{args.prefill}"] if args.prefill else [])
    print(json.dumps({"benchmark": "ab_trees", "machine": machine(), "trees": {k: str(v) for k, v in trees.items()},
                      "config": vars(args), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                      **summarize(runs, cases)}, indent=2))


if __name__ == "__main__":
    main()
