"""GB/s of weight reads for few-row bf16 matmuls on CPU: torch.mv, F.linear, W @ x^T and the
gemmaserve.ops.cpu_kernels GEMV over the bench model's shapes; prints one JSON summary.

    python -m benchmarks.probes.gemv_bench --int8    # int8-weight kernel vs the bf16 kernel (G weights/s)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KernelPolicy

# (name, N, K) of the bench model (demo.py "bench": hidden 1024, 8 heads x 128, 2 KV heads, full
# layers 256-wide heads, dense MLP 896, 32 experts x 512 with top-4, vocab 32768).
SHAPES = [
    ("qkv_sliding", 1536, 1024),
    ("qkv_full", 2560, 1024),
    ("o_full", 1024, 2048),
    ("mlp_gate_up", 1792, 1024),
    ("mlp_down", 1024, 896),
    ("expert_gate_up", 1024, 1024),
    ("expert_down", 1024, 512),
    ("lm_head", 32768, 1024),
]


def _time(fns: dict, reps: int, budget_s: float) -> dict[str, float]:
    """{name: median seconds}. Paths run interleaved rep by rep so that load from other processes
    hits all alike; each is first run until ~budget_s has passed so its pages are resident."""
    for fn in fns.values():
        end = time.perf_counter() + budget_s
        while time.perf_counter() < end:
            fn()
    ts: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t)
    return {n: sorted(v)[len(v) // 2] for n, v in ts.items()}


def _experts(args) -> list[dict]:
    """MoE gather for the bench model (32 experts, gate_up [1024, 1024], top-4): gemv_experts vs a
    torch loop that groups tokens per expert and runs W @ x^T once per used expert."""
    e, n, k, topk = 32, 1024, 1024, 4
    copies = max(1, (256 << 20) // (e * n * k * 2))
    ws = [torch.randn(e, n, k).bfloat16() for _ in range(copies)]
    g = torch.Generator().manual_seed(1)
    rows = []
    for m in (int(r) for r in args.rows.split(",")):
        x = torch.randn(m, k).bfloat16()
        ids = torch.stack([torch.randperm(e, generator=g)[:topk] for _ in range(m)])
        used = [(int(ex), (ids == ex).nonzero()) for ex in ids.unique()]  # (expert, [(token, slot)])
        it = {"i": 0}

        def nxt():
            it["i"] = (it["i"] + 1) % copies
            return ws[it["i"]]

        def torch_grouped():
            w, out = nxt(), torch.empty(m, topk, n, dtype=torch.bfloat16)
            for ex, pairs in used:
                out[pairs[:, 0], pairs[:, 1]] = (w[ex] @ x[pairs[:, 0]].t()).t()
            return out

        t = _time({"kernel": lambda: cpu_kernels.gemv_experts(args.lib, nxt(), ids, x), "torch_grouped": torch_grouped},
                  args.reps, args.warm_s)
        nbytes = len(used) * n * k * 2
        row = {"shape": "experts_gate_up_top4", "E": e, "N": n, "K": k, "M": m, "experts_read": len(used),
               **{f"{p}_gbs": round(nbytes / s / 1e9, 1) for p, s in t.items()},
               **{f"{p}_us": round(s * 1e6, 1) for p, s in t.items()},
               "speedup_vs_torch_grouped": round(t["torch_grouped"] / t["kernel"], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _int8(args) -> list[dict]:
    """Weights per second (what decode needs: int8 reads half the bytes) of the int8-weight kernel, the
    bf16 kernel and torch's _weight_int8pack_mm on the same shapes, interleaved."""
    from gemmaserve.ops.quant import quantize_per_channel

    rows = []
    for name, n, k in SHAPES:
        copies = args.copies or max(1, (256 << 20) // (n * k * 2))
        ws = [torch.randn(n, k).bfloat16() for _ in range(copies)]
        qs = [quantize_per_channel(w) for w in ws]
        for m in (int(r) for r in args.rows.split(",")):
            x = torch.randn(m, k).bfloat16()
            it = {"i": 0}

            def nxt(pool):
                it["i"] = (it["i"] + 1) % copies
                return pool[it["i"]]

            fns = {"bf16_kernel": lambda: cpu_kernels.gemv(args.lib, nxt(ws), x),
                   "int8_kernel": lambda: cpu_kernels.gemv_int8(args.lib, *nxt(qs), x)}
            if k % 32 == 0:
                fns["int8pack"] = lambda: torch.ops.aten._weight_int8pack_mm(x, *nxt(qs))
            t = _time(fns, args.reps, args.warm_s)
            row = {"shape": name, "N": n, "K": k, "M": m, **{f"{p}_gws": round(n * k / s / 1e9, 2) for p, s in t.items()},
                   "int8_speedup_vs_bf16_kernel": round(t["bf16_kernel"] / t["int8_kernel"], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del ws, qs
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warm-s", type=float, default=0.2)
    ap.add_argument("--copies", type=int, default=0,
                    help="weight copies cycled through so reads come from DRAM, not cache "
                         "(default: enough for 256 MiB per shape)")
    ap.add_argument("--int8", action="store_true", help="int8-weight kernel vs bf16 kernel instead")
    ap.add_argument("--cpu-isa", default=None, help="build the kernels for at most this ISA tier")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = KernelPolicy.default() if args.cpu_isa is None else KernelPolicy.default().for_tier(args.cpu_isa)
    args.lib = policy.lib
    if args.lib is None:
        raise SystemExit("CPU kernels unavailable")
    if args.int8:
        results = _int8(args)
        speedups = sorted(r["int8_speedup_vs_bf16_kernel"] for r in results)
        print(json.dumps({"bench": "gemv_int8", "threads": args.threads, "isa": args.lib.int8_isa, "cpu": policy.features.as_dict(),
                          "loadavg": os.getloadavg(), "median_int8_speedup": speedups[len(speedups) // 2],
                          "results": results}))
        return
    results = []
    for name, n, k in SHAPES:
        nbytes = n * k * 2
        copies = args.copies or max(1, (256 << 20) // nbytes)
        ws = [torch.randn(n, k).bfloat16() for _ in range(copies)]
        for m in (int(r) for r in args.rows.split(",")):
            x = torch.randn(m, k).bfloat16()
            it = {"i": 0}

            def nxt():
                it["i"] = (it["i"] + 1) % copies
                return ws[it["i"]]

            fns = {
                "kernel": lambda: cpu_kernels.gemv(args.lib, nxt(), x),
                "linear": lambda: F.linear(x, nxt()),
                "wxt": lambda: nxt() @ x.t(),
            }
            if m == 1:
                fns["mv"] = lambda: torch.mv(nxt(), x[0])
                # Streaming-read ceiling measured alongside: an fp32 sum over the same bytes.
                fns["sum_fp32"] = lambda: nxt().view(torch.float32).sum()
            t = _time(fns, args.reps, args.warm_s)
            row = {"shape": name, "N": n, "K": k, "M": m, **{f"{p}_gbs": round(nbytes / s / 1e9, 1) for p, s in t.items()},
                   **{f"{p}_us": round(s * 1e6, 1) for p, s in t.items()}}
            best_torch = min(s for p, s in t.items() if p not in ("kernel", "sum_fp32"))
            row["speedup_vs_best_torch"] = round(best_torch / t["kernel"], 2)
            row["speedup_vs_linear"] = round(t["linear"] / t["kernel"], 2)
            results.append(row)
            print(json.dumps(row), flush=True)
        del ws
    results += _experts(args)
    speedups = sorted(r["speedup_vs_best_torch"] for r in results if "speedup_vs_best_torch" in r)
    print(json.dumps({
        "bench": "gemv", "threads": args.threads, "isa": args.lib.isa, "cpu": policy.features.as_dict(), "loadavg": os.getloadavg(),
        "median_speedup_vs_best_torch": speedups[len(speedups) // 2], "results": results,
    }))


if __name__ == "__main__":
    main()
