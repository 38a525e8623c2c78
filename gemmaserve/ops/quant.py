"""Weight-only int8 (per-output-channel, symmetric): quantization, int8 matmul and int8 MoE experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.activation import gelu_tanh_mul
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.moe import grouped_loop

# The int8 thresholds (int8_gemv_max_rows, int8_moe_max_tokens, int8pack_max_rows) live on
# ops.dispatch.KernelPolicy with their measurements.


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


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, policy: KernelPolicy | None = None) -> torch.Tensor:
    """y = x (q * scale)^T. x [..., K]; q [N, K] int8; scale [N] in x's dtype -> [..., N]. Few bf16 CPU
    rows take the int8 GEMV kernel (reads each int8 weight row once for all rows, widening in registers);
    past it, up to policy.int8pack_max_rows rows torch's int8 kernel; else a dequantised GEMM."""
    p = policy or KernelPolicy.default()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    if x2.shape[0] <= p.int8_gemv_max_rows and q.dim() == 2 and _int8_ok(p, x2, q, scale):
        return cpu_kernels.gemv_int8(p.lib, q, scale, x2).reshape(*lead, q.shape[0])  # any K
    if x2.device.type == "cpu" and x2.shape[0] <= p.int8pack_max_rows and x2.shape[1] % 32 == 0:
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), q, scale)  # [M, N]
    else:
        # Scale the output, not the weight: one [M, N] multiply instead of [N, K]. The weight copy is
        # exact either way; the kernel's cast is ~5x torch's (see gs_int8_to_bf16).
        fast = x2.dtype is torch.bfloat16 and p.takes("int8_gemv", q, dtypes=(torch.int8,))
        y = F.linear(x2, cpu_kernels.int8_to_bf16(p.lib, q) if fast else q.to(x2.dtype)) * scale
    return y.reshape(*lead, q.shape[0])


def moe_experts_int8(
    x: torch.Tensor,
    gate_up_q: torch.Tensor,
    gate_up_scale: torch.Tensor,
    down_q: torch.Tensor,
    down_scale: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """Chosen experts only: few bf16 CPU tokens as two expert-gather kernel calls (moe_gather_int8),
    else one int8 matmul pair per active expert in ops.moe's grouped_loop.

    x [T, H]; gate_up_q [E, 2I, H] int8 (gate rows first), gate_up_scale [E, 2I]; down_q [E, H, I]
    int8, down_scale [E, H]; topk_idx [T, K] int64; topk_w [T, K] fp32 -> [T, H] in x's dtype."""
    p = policy or KernelPolicy.default()
    if (x.shape[0] <= p.int8_moe_max_tokens and gate_up_q.dim() == 3 and _int8_ok(p, x, gate_up_q, gate_up_scale)
            and _int8_ok(p, x, down_q, down_scale)):
        return moe_gather_int8(x, gate_up_q, gate_up_scale, down_q, down_scale, topk_idx, topk_w, p)

    def expert(e: int, xs: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        gate, up = int8_linear(xs, gate_up_q[e], gate_up_scale[e], p).chunk(2, dim=-1)  # [n, I]
        y = int8_linear(F.gelu(gate, approximate="tanh") * up, down_q[e], down_scale[e], p)  # [n, H]
        return (y * ws[:, None]).to(x.dtype)  # weighted in fp32 after the down projection, one rounding

    return grouped_loop(x, topk_idx, topk_w, gate_up_q.shape[0], expert)


def moe_gather_int8(
    x: torch.Tensor,
    gate_up_q: torch.Tensor,
    gate_up_scale: torch.Tensor,
    down_q: torch.Tensor,
    down_scale: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    policy: KernelPolicy,
) -> torch.Tensor:
    """ops.moe.moe_gather_gemv on int8 experts: one kernel call for every (token, expert) gate_up product,
    one for every down product (fp32 out), the routing-weighted sum in fp32 and one bf16 rounding (the
    rounding points of the bf16 path and of the one-call decode layer). Same contract as
    moe_experts_int8; x bf16 on CPU, contiguous int8 tensors, policy.lib."""
    t, k = topk_idx.shape
    gate_up = cpu_kernels.gemv_int8_experts(policy.lib, gate_up_q, gate_up_scale, topk_idx, x, check=False)  # [T, K, 2I]
    act = gelu_tanh_mul(*gate_up.chunk(2, dim=-1), policy).view(t * k, -1)  # [T*K, I]
    y = cpu_kernels.gemv_int8_experts(policy.lib, down_q, down_scale, topk_idx.view(t * k, 1), act, torch.float32,
                                      check=False)  # [T*K, 1, H] fp32
    return torch.bmm(topk_w[:, None, :], y.view(t, k, -1)).view(t, -1).to(x.dtype)  # [T, H]


def _int8_ok(p: KernelPolicy, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> bool:
    """The int8 kernels' eligibility: bf16 CPU rows, contiguous int8 weights with contiguous bf16/fp32
    scales, the "int8_gemv" switch on and the library built (policy.takes)."""
    return (
        p.takes("int8_gemv", strided=(x2,))
        and p.takes("int8_gemv", q, dtypes=(torch.int8,))
        and p.takes("int8_gemv", scale, dtypes=(torch.bfloat16, torch.float32))
    )
