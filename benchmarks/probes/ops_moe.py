"""Times the gather and grouped MoE expert paths over token counts and prints one JSON summary with
the crossover that sets KernelPolicy.moe_grouped_min_tokens (ops/dispatch.py). In bf16 it also times the grouped-GEMM
form (moe_grouped_mm): what CUDA (sm90+) uses at every token count, and what CPU declines (slower
than the loop at 1 thread, mixed at 2)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from gemmaserve.ops.moe import moe_gather, moe_grouped, moe_grouped_mm


def _time_pair(fns: dict, reps: int) -> dict[str, tuple[float, float]]:
    """{name: (min wall ms, median process-CPU ms)}. The paths run interleaved rep by rep so that
    load from other processes hits both alike; the min resists that load best."""
    for fn in fns.values():
        fn()
    walls: dict[str, list[float]] = {n: [] for n in fns}
    cpus: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - w)
            cpus[name].append(time.process_time() - c)
    return {n: (min(walls[n]) * 1e3, sorted(cpus[n])[reps // 2] * 1e3) for n in fns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--width", type=int, default=512, help="expert intermediate size")
    ap.add_argument("--tokens", default="1,2,3,4,6,8,16,32,64,128,256,512,1024")
    ap.add_argument("--gather-max-bytes", type=float, default=2e9,
                    help="skip the gather path where its weight copies would exceed this")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    e, h, i, k = args.experts, args.hidden, args.width, args.top_k
    gate_up = (torch.randn(e, 2 * i, h, generator=gen) * 0.02).to(args.device, dtype)
    down = (torch.randn(e, h, i, generator=gen) * 0.02).to(args.device, dtype)
    per_pair_bytes = 3 * i * h * gate_up.element_size()
    # Device work is asynchronous: each timed call ends with a sync so the wall time covers it.
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    with torch.inference_mode():
        for t in (int(x) for x in args.tokens.split(",")):
            x = torch.randn(t, h, generator=gen).to(args.device, dtype)
            logits = torch.randn(t, e, generator=gen)
            w, idx = torch.softmax(logits, -1).topk(k, dim=-1)
            w, idx = w.to(args.device), idx.to(args.device)
            fns = {"grouped": lambda: (moe_grouped(x, gate_up, down, idx, w), sync())}
            if t * k * per_pair_bytes <= args.gather_max_bytes:
                fns["gather"] = lambda: (moe_gather(x, gate_up, down, idx, w), sync())
            if dtype is torch.bfloat16 and hasattr(torch, "_grouped_mm"):
                fns["grouped_mm"] = lambda: (moe_grouped_mm(x, gate_up, down, idx, w), sync())
            row: dict = {"tokens": t}
            for name, (wall, cpu) in _time_pair(fns, args.reps).items():
                row[f"{name}_ms"], row[f"{name}_cpu_ms"] = wall, cpu
            rows.append({key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()})
    # Crossover: the smallest token count from which grouped is at least as fast as gather at
    # every measured count (gather counts that were skipped for memory count as grouped wins).
    crossover = rows[-1]["tokens"] + 1
    for r in reversed(rows):
        if "gather_ms" in r and r["gather_ms"] < r["grouped_ms"]:
            break
        crossover = r["tokens"]
    print(json.dumps({
        "shape": {"hidden": h, "experts": e, "top_k": k, "width": i, "dtype": args.dtype,
                  "device": args.device, "threads": args.threads},
        "rows": rows,
        "grouped_min_tokens": crossover,
    }))


if __name__ == "__main__":
    main()
