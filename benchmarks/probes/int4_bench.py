"""The int4 thresholds' A/B: GEMV kernel per tier vs kernel dequantisation + bf16 GEMM vs a bf16 GEMM, by
row count, on one projection shape; and weight error per group size. One JSON summary.

    flock /tmp/gs-bench.lock python benchmarks/probes/int4_bench.py [--n 4096 --k 2816 --group 64]"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_int4
from gemmaserve.ops.int4 import dequantize_int4, quantize_int4


def best_ms(fn, reps: int = 7) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=2816)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--rows", default="1,2,4,8,16,32,64")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.n, args.k, generator=g) * 0.02
    packed, scale = quantize_int4(w, args.group)
    wb = w.bfloat16()
    rows = {}
    for m in map(int, args.rows.split(",")):
        x = torch.randn(m, args.k, generator=g).bfloat16()
        row = {t: round(best_ms(lambda t=t: cpu_int4.gemv_int4(packed, scale, args.group, x, tier=t)), 3)
               for t in cpu_int4.tiers()}
        row["dequant+gemm"] = round(best_ms(lambda: F.linear(x, cpu_int4.dequantize_bf16(packed, scale, args.k, args.group))), 3)
        row["bf16_gemm"] = round(best_ms(lambda: F.linear(x, wb)), 3)
        rows[m] = row
    errors = {}
    for group in (32, 64, 128, args.k):
        p, s = quantize_int4(w, group)
        errors[group] = round(float((dequantize_int4(p, s, args.k, group) - w).norm() / w.norm()), 4)
    weight_bytes = packed.numel() * 4 + scale.numel() * 2
    one = rows[min(rows)]
    print(json.dumps({
        "shape": [args.n, args.k], "group": args.group, "threads": torch.get_num_threads(), "tiers": cpu_int4.tiers(),
        "ms_by_rows": rows, "gb_s_1row_best_tier": round(weight_bytes / (one[cpu_int4.best_tier()] / 1e3) / 1e9, 2),
        "relative_weight_error_by_group": errors,
    }))


if __name__ == "__main__":
    main()
