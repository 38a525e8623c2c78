"""Where decode time goes: gemmaserve's engine steps under torch.profiler, top ops by self time.

    python -m benchmarks.probes.profile_decode --model .bench-model --batch 1 --steps 32
    python -m benchmarks.probes.profile_decode --model .bench-model --batch 32 --steps 16 --input-len 512
    python -m benchmarks.probes.profile_decode --model /tmp/g26 --dummy-weights --device cuda --batch 1

Prefills `--batch` random prompts (not profiled), then profiles `--steps` decode steps and prints
one JSON: wall time per step, the share of it that torch ops account for (the rest is Python,
scheduling and dispatch between ops), and the ops with the most self CPU time. On CUDA it also
records device activity: the kernels' busy share of the wall time (low = host-bound: the GPU
waits for Python, launches or syncs) and the kernels with the most device time, inside replayed
CUDA graphs too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.prompts import PromptVocab  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--llm-kwargs", default="{}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dummy-weights", action="store_true")
    args = p.parse_args(argv)

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from gemmaserve.engine.llm import LLM
    from gemmaserve.types import SamplingParams

    torch.set_num_threads(args.threads)
    kw = json.loads(args.llm_kwargs) | ({"dummy_weights": True} if args.dummy_weights else {})
    engine = LLM(model=args.model, dtype="bfloat16", device=args.device, **kw).engine
    on_cuda = args.device.startswith("cuda")
    prompts = PromptVocab.from_tokenizer(args.model, 2).prompts(args.batch, args.input_len, seed=7)
    n_new = args.steps + 64  # enough that nobody finishes inside the profiled window
    params = SamplingParams(max_tokens=n_new, min_tokens=n_new, temperature=0.0, ignore_eos=True)
    rids = [f"prof-{i}" for i in range(args.batch)]
    for rid, prompt in zip(rids, prompts):
        engine.add_request(rid, prompt, params)
    got: dict[str, int] = dict.fromkeys(rids, 0)
    while min(got.values()) < 4:  # past every prefill, plus a few warm decode steps
        for o in engine.step():
            got[o.request_id] += len(o.new_token_ids)

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])) as prof:
        for _ in range(args.steps):
            engine.step()
    wall = time.perf_counter() - t0
    for rid in rids:
        engine.abort(rid)

    events = prof.key_averages()
    # Self times of all ops sum to the time spent inside torch; top-level op time is what the
    # step spends in kernels, and the rest of the wall time is Python between them.
    op_us = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    device: dict = {}
    if on_cuda:
        # Kernel rows only (device-side events): their summed time over the wall time is how busy the GPU was.
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        busy_us = sum(e.self_device_time_total for e in kernels)
        device = {
            "device_busy_share_of_wall": busy_us / 1e6 / wall,
            "kernels_per_step": sum(e.count for e in kernels) / args.steps,
            "top_kernels": [{"kernel": e.key[:120], "ms_per_step": e.self_device_time_total / 1000 / args.steps,
                             "calls_per_step": e.count / args.steps}
                            for e in sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[: args.top]],
        }
    print(json.dumps({
        "batch": args.batch,
        "device": args.device,
        "steps": args.steps,
        "wall_ms_per_step": 1000 * wall / args.steps,
        "tok_s": args.batch * args.steps / wall,
        "torch_op_share_of_wall": op_us / 1e6 / wall,
        "top_ops": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / args.steps,
                     "calls_per_step": e.count / args.steps} for e in top],
        **device,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
