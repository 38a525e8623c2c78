"""Weight-only int8 (per-output-channel, symmetric): quantization, int8 matmul and int8 MoE experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_gemv
from gemmaserve.ops.activation import gelu_tanh_mul

# Up to this many rows of bf16 x on CPU, the gcc-built int8 GEMV (ops/cpu_gemv.py, csrc/gemv_int8.cpp)
# reads each int8 weight row once for all rows, widening in registers; 0 = off. Beyond 8 rows it would
# re-read the weight per 8-row group.
KERNEL_MAX_ROWS = cpu_gemv.MAX_ROWS
# Up to this many tokens the int8 MoE runs as two expert-gather kernel calls (like ops.moe's bf16
# GEMV_MAX_TOKENS); 0 = off.
KERNEL_MAX_TOKENS = 8
# Past the kernel's rows (or without it), up to this many rows torch's int8 kernel
# (aten._weight_int8pack_mm: reads int8, converts in registers) beats dequantising; above it the
# matmul is compute-bound and a bf16 GEMM on a dequantised copy wins. Measured on [1024, 1024]
# bf16, 2 threads: the kernel costs ~11 us per row, dequantise + GEMM ~150 us flat; crossover at
# ~12-16 rows. It needs K % 32 == 0: torch 2.13 returns garbage for bf16 with K = 24 or 40 and
# crashes on K = 13.
INT8PACK_MAX_ROWS = 12


def quantize_per_channel(w: torch.Tensor, scale_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] (float) -> (q [..., N, K] int8, scale [..., N]) with w ≈ q * scale[..., None].

    Symmetric: scale = max|w| over K / 127, q = round(w / scale) in [-127, 127]. Leading dims (the
    experts of a fused tensor) are quantized one slice at a time so no full fp32 copy is made."""
    scale_dtype = scale_dtype or w.dtype
    if w.dim() > 2:
        qs = [quantize_per_channel(w[i], scale_dtype) for i in range(w.shape[0])]
        return torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])
    amax = w.abs().amax(dim=-1).float()  # [N]; exact in any float dtype
    # An all-zero row gets scale 1 (its q is 0), never a division by zero.
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    # The scale is rounded to its storage dtype first, so q is chosen against the scale used.
    scale = scale.to(scale_dtype)
    wf = w.to(torch.float32, copy=True)  # [N, K]: one fp32 matrix at a time (never the caller's), then in place
    wf.div_(scale.float()[:, None]).round_().clamp_(-127, 127)
    return wf.to(torch.int8), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q [..., N, K] int8, scale [..., N] -> [..., N, K] in dtype."""
    return q.to(dtype) * scale.to(dtype)[..., None]


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """y = x (q * scale)^T. x [..., K]; q [N, K] int8; scale [N] in x's dtype -> [..., N]."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    if _kernel_ok(x2, q, scale, KERNEL_MAX_ROWS, 2):
        return cpu_gemv.gemv_int8(q, scale, x2).reshape(*lead, q.shape[0])  # any K
    if x2.device.type == "cpu" and x2.shape[0] <= INT8PACK_MAX_ROWS and x2.shape[1] % 32 == 0:
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), q, scale)  # [M, N]
    else:
        # Scale the output, not the weight: one [M, N] multiply instead of [N, K]. The weight copy is
        # exact either way; the kernel's cast is ~5x torch's (see gs_int8_to_bf16).
        fast = x2.dtype is torch.bfloat16 and x2.device.type == "cpu" and q.is_contiguous() and cpu_gemv.available()
        y = F.linear(x2, cpu_gemv.int8_to_bf16(q) if fast else q.to(x2.dtype)) * scale
    return y.reshape(*lead, q.shape[0])


def moe_experts_int8(
    x: torch.Tensor,
    gate_up_q: torch.Tensor,
    gate_up_scale: torch.Tensor,
    down_q: torch.Tensor,
    down_scale: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
) -> torch.Tensor:
    """Chosen experts only, grouped by expert (one int8 matmul pair per active expert).

    x [T, H]; gate_up_q [E, 2I, H] int8 (gate rows first), gate_up_scale [E, 2I]; down_q [E, H, I]
    int8, down_scale [E, H]; topk_idx [T, K] int64; topk_w [T, K] fp32 -> [T, H] in x's dtype.
    Same contract and summation order as ops.moe.moe_grouped (few bf16 CPU tokens: moe_gather_int8)."""
    few = _kernel_ok(x, gate_up_q, gate_up_scale, KERNEL_MAX_TOKENS, 3)
    if few and down_q.is_contiguous() and down_scale.is_contiguous():
        return moe_gather_int8(x, gate_up_q, gate_up_scale, down_q, down_scale, topk_idx, topk_w)
    t, k = topk_idx.shape
    flat = topk_idx.reshape(-1)  # [T*K]
    order = torch.argsort(flat, stable=True)  # [T*K] pairs grouped by expert
    counts = torch.bincount(flat, minlength=gate_up_q.shape[0]).tolist()
    tokens = order // k  # [T*K]
    xs = x[tokens]  # [T*K, H]
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        end = start + n
        gate, up = int8_linear(xs[start:end], gate_up_q[e], gate_up_scale[e]).chunk(2, dim=-1)  # [n, I]
        ys[start:end] = int8_linear(F.gelu(gate, approximate="tanh") * up, down_q[e], down_scale[e])  # [n, H]
        start = end
    ys = (ys * topk_w.reshape(-1)[order, None]).to(x.dtype)  # [T*K, H]
    out = torch.zeros_like(x)
    out.index_add_(0, tokens, ys)
    return out


def moe_gather_int8(
    x: torch.Tensor,
    gate_up_q: torch.Tensor,
    gate_up_scale: torch.Tensor,
    down_q: torch.Tensor,
    down_scale: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
) -> torch.Tensor:
    """ops.moe.moe_gather_gemv on int8 experts: one kernel call for every (token, expert) gate_up product,
    one for every down product (fp32 out), the routing-weighted sum in fp32 and one bf16 rounding (the
    rounding points of the bf16 path and of the one-call decode layer). Same contract as
    moe_experts_int8; x bf16 on CPU, contiguous int8 tensors, cpu_gemv.available()."""
    t, k = topk_idx.shape
    gate_up = cpu_gemv.gemv_int8_experts(gate_up_q, gate_up_scale, topk_idx, x, check=False)  # [T, K, 2I]
    act = gelu_tanh_mul(*gate_up.chunk(2, dim=-1)).view(t * k, -1)  # [T*K, I]
    y = cpu_gemv.gemv_int8_experts(down_q, down_scale, topk_idx.view(t * k, 1), act, torch.float32, check=False)
    # y [T*K, 1, H] fp32
    return torch.bmm(topk_w[:, None, :], y.view(t, k, -1)).view(t, -1).to(x.dtype)  # [T, H]


def _kernel_ok(x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, max_rows: int, ndim: int) -> bool:
    """Whether the int8 GEMV kernel takes x2 [M, K] against q (ndim-D): few bf16 CPU rows, contiguous
    int8 weights with bf16/fp32 scales, the kernel built (GEMMASERVE_CPU_KERNELS=0 turns it off)."""
    return (
        x2.shape[0] <= max_rows
        and x2.dtype is torch.bfloat16
        and x2.device.type == "cpu"
        and q.dim() == ndim
        and q.dtype is torch.int8
        and q.is_contiguous()
        and scale.dtype in (torch.bfloat16, torch.float32)
        and scale.is_contiguous()
        and cpu_gemv.available()
    )
