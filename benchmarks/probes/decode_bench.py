"""Model-level decode/prefill timing on the bench shape: prints one JSON (ms/step, tok/s per batch size).

    python -m benchmarks.probes.decode_bench                 # candidate (fused projections, CPU kernels)
    python -m benchmarks.probes.decode_bench --torch         # fused, every CPU kernel switched off (torch ops)
    python -m benchmarks.probes.decode_bench --baseline      # unfused model, plain F.linear for few rows, no kernels
    python -m benchmarks.probes.decode_bench --ab            # torch and candidate in one process, interleaved, medians
    python -m benchmarks.probes.decode_bench --ab --variants baseline,torch,candidate
    python -m benchmarks.probes.decode_bench --ab --variants candidate,int8 --batches 1,8   # int8 weights vs bf16
    python -m benchmarks.probes.decode_bench --int8          # the candidate with int8 weights

Times Gemma4ForCausalLM.forward alone (no scheduler, no sampler) over a paged KV cache: a 512-token
prefill, then decode steps at batch 1, 8 and 32 with a 512-token context per sequence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import dataclasses  # noqa: E402

from gemmaserve.demo import demo_config  # noqa: E402
from gemmaserve.model.batch import ForwardBatch, KindMetadata  # noqa: E402
from gemmaserve.model.config import Gemma4TextConfig  # noqa: E402
from gemmaserve.model.decoder import Gemma4ForCausalLM  # noqa: E402
from gemmaserve.ops.dispatch import KernelPolicy  # noqa: E402

BLOCK = 16


def variant_policy(fused: bool, kernels: bool, cpu_isa: str | None = None) -> KernelPolicy:
    """The kernel policy of a variant: this machine's (capped at cpu_isa), every CPU kernel off for the
    torch variants, and for the unfused baseline also the few-row W @ x^T path off (plain F.linear)."""
    p = KernelPolicy.default()
    if cpu_isa:
        p = p.for_tier(cpu_isa)
    if not (kernels and fused):
        p = p.torch_only()
    return p if fused else dataclasses.replace(p, wxt_max_rows=0)


def make_batch(cfg: Gemma4TextConfig, starts: list[int], n_new: int, blocks_per_seq: int) -> ForwardBatch:
    """Sequence s owns blocks [s*blocks_per_seq, (s+1)*blocks_per_seq) of every kind; it has `starts[s]`
    cached tokens and adds n_new tokens; every sequence samples its last row."""
    ids, pos, slots, qsl, seq_lens, logit_rows = [], [], [], [0], [], []
    for s, start in enumerate(starts):
        span = range(start, start + n_new)
        ids.extend((7 * p + 13 * s) % cfg.vocab_size for p in span)
        pos.extend(span)
        slots.extend((s * blocks_per_seq + p // BLOCK) * BLOCK + p % BLOCK for p in span)
        qsl.append(qsl[-1] + n_new)
        seq_lens.append(start + n_new)
        logit_rows.append(qsl[-1] - 1)
    tables = torch.tensor([[s * blocks_per_seq + b for b in range(blocks_per_seq)] for s in range(len(starts))],
                          dtype=torch.int32)  # fmt: skip
    meta = KindMetadata(block_tables=tables, slot_mapping=torch.tensor(slots))
    return ForwardBatch(
        input_ids=torch.tensor(ids), positions=torch.tensor(pos),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32), seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        kinds={s.kind: meta for s in cfg.attention_kinds()}, logits_indices=torch.tensor(logit_rows),
        block_size=BLOCK, query_lens_cpu=[n_new] * len(starts), seq_lens_cpu=seq_lens,
    )  # fmt: skip


def build(size: str, fused: bool, seed: int = 0, int8: bool = False) -> Gemma4ForCausalLM:
    cfg = Gemma4TextConfig.from_dict(demo_config(size))
    model = Gemma4ForCausalLM(cfg, torch.bfloat16).init_random_(seed)
    if int8:  # the loader's quantization="int8" swap, then fusion as the model runner does it
        from gemmaserve.model.quantize import quantize_model_int8_

        quantize_model_int8_(model)
    if fused:
        model.fuse_()
    return model


def time_case(model: Gemma4ForCausalLM, batch: int, ctx: int, steps: int) -> list[float]:
    """Per-step seconds of `steps` decode steps at `batch` sequences that start with `ctx` tokens
    (ctx == 0 and steps == 0: time the prefill of... see prefill_times)."""
    cfg = model.config
    bps = (ctx + steps + 1 + BLOCK - 1) // BLOCK + 1
    kinds = {s.kind: batch * bps for s in cfg.attention_kinds()}
    kv = model.allocate_kv_caches(kinds, BLOCK)
    out = []
    with torch.inference_mode():
        # The contexts' K/V content does not change the cost; the caches start zeroed.
        for i in range(steps):
            b = make_batch(cfg, [ctx + i] * batch, 1, bps)
            t0 = time.perf_counter()
            model(b, kv)
            out.append(time.perf_counter() - t0)
    return out


def prefill_times(model: Gemma4ForCausalLM, n: int, reps: int) -> list[float]:
    cfg = model.config
    bps = (n + BLOCK - 1) // BLOCK
    kv = model.allocate_kv_caches({s.kind: bps for s in cfg.attention_kinds()}, BLOCK)
    b = make_batch(cfg, [0], n, bps)
    out = []
    with torch.inference_mode():
        for _ in range(reps):
            t0 = time.perf_counter()
            model(b, kv)
            out.append(time.perf_counter() - t0)
    return out


def measure(model: Gemma4ForCausalLM, batches: Sequence[int], ctx: int, steps: int, prefill: int,
            kernels: bool = True, cpu_isa: str | None = None) -> dict:
    # The baseline is the unfused model; it also switches off the few-row W @ x^T path and the kernels.
    fused = getattr(model.layers[0].self_attn, "qkv_proj", None) is not None
    model.use_kernel_policy(variant_policy(fused, kernels, cpu_isa))
    res = {}
    for bsz in batches:
        t = statistics.median(time_case(model, bsz, ctx, steps)[2:])  # first steps warm up
        res[f"b{bsz}"] = {"ms_per_step": round(1000 * t, 2), "tok_s": round(bsz / t, 1)}
    if prefill:
        t = statistics.median(prefill_times(model, prefill, 3)[1:])
        res[f"prefill{prefill}"] = {"ms": round(1000 * t, 1), "tok_s": round(prefill / t, 1)}
    return res


# (fused, kernels, int8 weights). int8-torch: int8 weights on torch's ops (_weight_int8pack_mm, per-expert loop).
VARIANTS = {"baseline": (False, False, False), "torch": (True, False, False), "candidate": (True, True, False),
            "int8": (True, True, True), "int8-torch": (True, False, True)}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="bench")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds with --ab")
    p.add_argument("--variants", default="torch,candidate", help="with --ab: any of " + ",".join(VARIANTS))
    p.add_argument("--int8", action="store_true", help="weight-only int8 (loader's quantization='int8') for every variant")
    p.add_argument("--cpu-isa", default=None, help="cap the kernels' ISA tier (portable, avx2, avx512, avx512vnni, "
                   "avx512bf16, amx): the policy a CPU of that tier gets")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--baseline", action="store_true", help="unfused model, F.linear for few rows, no CPU kernels")
    g.add_argument("--torch", action="store_true", help="fused model, every CPU kernel off")
    g.add_argument("--ab", action="store_true", help="--variants interleaved in one process")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    if not args.ab:
        variant = "baseline" if args.baseline else "torch" if args.torch else "candidate"
        fused, kernels, int8 = VARIANTS[variant]
        model = build(args.size, fused=fused, int8=args.int8 or int8)
        res = measure(model, batches, args.ctx, args.steps, args.prefill, kernels, args.cpu_isa)
        print(json.dumps({"variant": variant + ("-int8" if args.int8 else ""), "loadavg": load,
                          "kernels": variant_policy(fused, kernels, args.cpu_isa).describe(), **res}))
        return
    names = [v for v in args.variants.split(",") if v]
    # One model per (fused, int8) form, all built from the same seed: int8 is the quantization of the bf16 weights.
    forms = {(VARIANTS[n][0], args.int8 or VARIANTS[n][2]) for n in names}
    built = {form: build(args.size, form[0], int8=form[1]) for form in forms}
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            fused, kernels, int8 = VARIANTS[name]
            model = built[(fused, args.int8 or int8)]
            rounds[name].append(measure(model, batches, args.ctx, args.steps, args.prefill, kernels, args.cpu_isa))
    out: dict = {"loadavg_before": load, "threads": args.threads,
                 "kernels": variant_policy(True, True, args.cpu_isa).describe()}
    for name, rs in rounds.items():
        out[name] = {
            case: {k: statistics.median(r[case][k] for r in rs) for k in rs[0][case]} for case in rs[0]
        }
    with open("/proc/loadavg") as f:
        out["loadavg_after"] = f.read().split()[:3]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
