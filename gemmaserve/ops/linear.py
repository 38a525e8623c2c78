"""Bias-free linear layer with CPU fast paths for the few-row inputs of decode steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_gemv

# Up to this many rows a CPU matmul is computed as (W @ x^T)^T. Measured with bf16 weights, 2 threads
# (us, F.linear vs W @ x^T): [1024x1024] at 4 rows 177 vs 101, at 32 rows 168 vs 129, at 64 rows 213
# vs 134, at 512 rows 606 vs 928; the [32768x1024] LM head at 32 rows 3123 vs 1776. The result is a
# transposed (non-contiguous) view; callers reshape rather than view it.
WXT_MAX_ROWS = 64
# Up to this many rows, bf16 on CPU, the gcc-built GEMV kernel (ops/cpu_gemv.py) reads each weight row
# once for all rows; 0 turns it off (decode_bench's baseline). Past cpu_gemv.rows_per_pass() (8
# without AMX) it would re-read W, so W @ x^T takes those rows.
GEMV_MAX_ROWS = cpu_gemv.AMX_ROWS


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ weight[out, in]^T -> [..., out].

    bf16 CPU inputs of at most GEMV_MAX_ROWS rows with a contiguous bf16 weight go to the GEMV kernel
    when it built (fp32 accumulation, one bf16 rounding: the same result as torch's bf16 matmul up to
    summation order). Otherwise a single row on CPU goes through torch.mv: for bf16 it reads the weight
    about 1.7x faster than the GEMM path (measured 3.0 vs 5.2 ms for a 32768x1024 LM head, one thread).
    A few rows (batched decode, MoE expert groups) use W @ x^T, which reads the weight in its stored
    row-major order (see WXT_MAX_ROWS)."""
    if x.dim() == 2 and x.device.type == "cpu":
        m = x.shape[0]
        if (
            m <= GEMV_MAX_ROWS
            and x.dtype is torch.bfloat16
            and weight.dtype is torch.bfloat16
            and weight.dim() == 2
            and weight.is_contiguous()
            and cpu_gemv.available()
            and m <= cpu_gemv.rows_per_pass()
        ):
            return cpu_gemv.gemv(weight, x)  # [M, out], contiguous
        if m == 1:
            return torch.mv(weight, x[0])[None]
        if m <= WXT_MAX_ROWS:
            return (weight @ x.t()).t()  # [out, T] -> [T, out] view
    return F.linear(x, weight)
