"""Decode roofline: measured memory read bandwidth over the weight bytes one decoded token reads.

    python -m benchmarks.suite.roofline --model .bench-model                  # limit only
    python -m benchmarks.suite.roofline --model .bench-model --decode-tok-s 96 # + gemmaserve's fraction
    python -m benchmarks.suite.roofline --model .bench-model --measure         # runs gemmaserve's LLM too

Single-stream decode reads every active weight once per token (batch 1 has no reuse), so
tok/s <= bandwidth / active bytes. Active = embedding row + attention + dense MLP + router + the
top-k experts + norms + the whole LM head (it is tied to the embedding but read in full).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a file: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suite.machine import machine  # noqa: E402
from gemmaserve.model.config import Gemma4TextConfig  # noqa: E402

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass
class ActiveParams:
    """Parameters read to decode one token, by component (element counts, not bytes)."""

    embedding_row: int
    attention: int  # q/k/v/o projections + q/k norms, all layers
    dense_mlp: int  # gate/up/down of the always-on GeGLU, all layers
    router: int  # proj + scale + per-expert scale, all layers
    experts: int  # top-k experts' gate_up + down, all layers
    norms: int  # layer norms, layer scalars, final norm
    lm_head: int
    # Output channels of the weights int8 quantizes (one scale each).
    quantized_channels: int = 0

    @property
    def total(self) -> int:
        return (self.embedding_row + self.attention + self.dense_mlp + self.router + self.experts
                + self.norms + self.lm_head)  # fmt: skip

    @property
    def quantizable(self) -> int:
        """What weight-only int8 stores in one byte: the linear and expert weights."""
        return self.attention + self.dense_mlp + self.experts


def active_params(cfg: Gemma4TextConfig) -> ActiveParams:
    H = cfg.hidden_size
    attn = dense = router = experts = norms = channels = 0
    for layer in range(cfg.num_hidden_layers):
        hd, nkv, nh = cfg.layer_head_dim(layer), cfg.layer_kv_heads(layer), cfg.num_attention_heads
        q, k = H * nh * hd, H * nkv * hd
        v = H * nkv * hd if cfg.layer_has_v_proj(layer) else 0
        o = nh * hd * H
        attn += q + k + v + o + 2 * hd  # + q_norm, k_norm weights (v_norm has none)
        channels += nh * hd + nkv * hd + (nkv * hd if v else 0) + H
        dense += 3 * H * cfg.intermediate_size
        channels += 2 * cfg.intermediate_size + H
        norms += 4 * H + 1  # input, post-attention, pre-/post-feedforward norms + layer_scalar
        if cfg.enable_moe_block:
            E, k_top, im = cfg.num_experts, cfg.top_k_experts, cfg.moe_intermediate_size
            router += E * H + H + E
            experts += k_top * 3 * H * im  # gate_up [2*im, H] + down [H, im] per chosen expert
            channels += k_top * (2 * im + H)
            norms += 3 * H  # pre_feedforward_layernorm_2, post_feedforward_layernorm_1/_2
    norms += H  # final norm
    return ActiveParams(
        embedding_row=H, attention=attn, dense_mlp=dense, router=router, experts=experts,
        norms=norms, lm_head=cfg.vocab_size * H, quantized_channels=channels,
    )  # fmt: skip


def total_params(cfg: Gemma4TextConfig) -> int:
    """All text-decoder parameters (tied embedding counted once): a check against the demo sizes."""
    a = active_params(cfg)
    all_experts = 0
    if cfg.enable_moe_block:
        all_experts = cfg.num_hidden_layers * cfg.num_experts * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    return a.total - a.embedding_row - a.experts + all_experts


def active_bytes(cfg: Gemma4TextConfig, dtype: str = "bf16", context: int = 0) -> int:
    """Bytes one decoded token reads: weights in `dtype` (int8: linear and expert weights one
    byte each plus a bf16 scale per output channel, the rest bf16), plus the KV cache of a
    sequence at `context` tokens in bf16."""
    a = active_params(cfg)
    if dtype == "int8":
        weights = a.quantizable + 2 * a.quantized_channels + 2 * (a.total - a.quantizable)
    else:
        weights = DTYPE_BYTES[dtype] * a.total
    return weights + (cfg.kv_bytes_for_tokens(context) if context else 0)


def measure_bandwidth(size_mib: int = 1024, threads: int = 2, repeats: int = 7, device: str = "cpu") -> dict:
    """Read bandwidth (GB/s) of a sum over a float32 buffer far larger than the caches; the
    best and median of `repeats`. A sum reads each byte once and writes nothing, like decode."""
    import torch

    torch.set_num_threads(threads)
    n = size_mib * (1 << 20) // 4
    buf = torch.ones(n, dtype=torch.float32, device=device)  # [n]; ones: pages touched before timing
    sync = torch.cuda.synchronize if buf.is_cuda else (lambda: None)
    buf.sum()  # warm-up
    sync()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        sync()
        rates.append(n * 4 / (time.perf_counter() - t0) / 1e9)
    return {"best_gb_s": max(rates), "median_gb_s": statistics.median(rates), "buffer_mib": size_mib,
            "threads": threads, "device": device}  # fmt: skip


def report(
    cfg: Gemma4TextConfig, bandwidth_gb_s: float, dtype: str = "bf16", context: int = 0,
    decode_tok_s: float | None = None,
) -> dict:  # fmt: skip
    a = active_params(cfg)
    nbytes = active_bytes(cfg, dtype, context)
    limit = bandwidth_gb_s * 1e9 / nbytes
    out = {
        "active_params": a.total,
        "active_params_by_component": {k: v for k, v in asdict(a).items() if k != "quantized_channels"},
        "total_params": total_params(cfg),
        "dtype": dtype,
        "context_tokens": context,
        "active_bytes_per_token": nbytes,
        "bandwidth_gb_s": bandwidth_gb_s,
        "decode_limit_tok_s": limit,
    }
    if decode_tok_s is not None:
        out["gemmaserve_decode_tok_s"] = decode_tok_s
        out["fraction_of_limit"] = decode_tok_s / limit
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint dir (config.json) or a config.json")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32", "int8"), default="bf16")
    p.add_argument("--context", type=int, default=0, help="add the KV bytes of a sequence this long")
    p.add_argument("--bandwidth", type=float, default=None, help="GB/s; skips the measurement")
    p.add_argument("--buffer-mib", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where to measure bandwidth (and decode with --measure)")
    p.add_argument("--decode-tok-s", type=float, default=None, help="a measured gemmaserve decode rate")
    p.add_argument("--measure", action="store_true", help="measure gemmaserve's single-stream decode")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    args = p.parse_args(argv)
    path = Path(args.model)
    cfg = Gemma4TextConfig.from_file(path / "config.json" if path.is_dir() else path)
    bw = {"best_gb_s": args.bandwidth} if args.bandwidth else measure_bandwidth(
        args.buffer_mib, args.threads, device=args.device
    )
    decode = args.decode_tok_s
    if args.measure:
        from benchmarks.suite.throughput import measure_gemmaserve_decode

        decode = measure_gemmaserve_decode(
            str(path), args.input_len, args.output_len, args.threads, device=args.device
        )
    out = report(cfg, bw["best_gb_s"], args.dtype, args.context, decode)
    out["bandwidth"] = bw
    out["machine"] = machine()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
