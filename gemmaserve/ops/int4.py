"""Weight-only group-wise 4-bit: quantize and pack in the compressed-tensors "pack-quantized" layout,
dequantize, the 4-bit linear and MoE experts (torch reference path, CPU kernel for few rows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_int4
from gemmaserve.ops.activation import gelu_tanh_mul
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.moe import moe_grouped_by

# Elements per scale along K. Relative error of W (fp32 dequant vs fp32) on normal(0, 0.02) [2816 x 2816]
# weights (benchmarks/probes/int4_bench.py): group 32: 0.095, 64: 0.103, 128: 0.111, per-channel: 0.143.
# Scales cost 16 / group bits per weight: 64 keeps 4.25 bits (the 26B-A4B's experts 12.1 GB; group 32
# would add 0.7 GB and leave too little of a 16 GiB budget for a 32K KV cache), 64 divides every
# projection width of the model (2816, 2112, 704; 128 does not divide 704), and it is llm-compressor's
# and GPTQ's second most common choice after 128.
GROUP_SIZE = 64
# Stored nibble = q + OFFSET (compressed-tensors' unsigned packing of symmetric int4 in [-8, 7]).
OFFSET = 8
# The kernel thresholds (int4_gemv_max_rows, int4_moe_max_tokens) and switch (int4_gemv) live on
# ops.dispatch.KernelPolicy with their measurements.


def quantize_int4(w: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] float -> (packed [..., N, ceil(K/8)] int32, scale [..., N, ceil(K/G)] bf16), symmetric:
    scale = max|w| over the group / 7.5 (compressed-tensors' symmetric int4 range), q = round(w / scale)
    clamped to [-8, 7]. Leading dims (experts) one slice at a time: at most one fp32 [N, K] copy. On CPU
    the kernel library computes the same numbers ~20x faster (the 26B-A4B's 25B weights in minutes)."""
    if w.is_cpu and w.dtype in (torch.bfloat16, torch.float32) and w.shape[-1] and cpu_int4.available():
        return cpu_int4.quantize(w, group_size)
    if w.dim() > 2:
        parts = [quantize_int4(w[i], group_size) for i in range(w.shape[0])]
        return torch.stack([p for p, _ in parts]), torch.stack([s for _, s in parts])
    n, k = w.shape
    ng = -(-k // group_size)
    wf = w.to(torch.float32, copy=True)  # [N, K]
    pad = ng * group_size - k
    wg = F.pad(wf, (0, pad)).view(n, ng, group_size)  # [N, G, group]
    amax = wg.abs().amax(dim=-1)  # [N, G]
    # The scale is rounded to bf16 before q is chosen, so q is chosen against the stored scale; an
    # all-zero group gets scale 1 (its q are 0), never a division by zero.
    scale = torch.where(amax > 0, amax / 7.5, torch.ones_like(amax)).to(torch.bfloat16)  # [N, G]
    q = (wg / scale.float()[..., None]).round_().clamp_(-8, 7).view(n, -1)[:, :k].to(torch.int8)  # [N, K]
    return pack_int4(q), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] int8 in [-8, 7] -> [N, ceil(K/8)] int32: element 8w+i at bits 4i..4i+3 of word w, stored
    as q + 8 (compressed_tensors.compressors.pack_quantized.helpers.pack_to_int32 with num_bits=4)."""
    n, k = q.shape
    kw = -(-k // 8)
    u = F.pad((q.to(torch.int32) + OFFSET), (0, kw * 8 - k)).view(n, kw, 8)  # [N, KW, 8]
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)  # [8]
    # Bits never overlap, so the sum is an OR; int32 wraps for the top nibble as the reference's does.
    return (u << shifts).sum(dim=-1, dtype=torch.int32)


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """packed [..., N, ceil(K/8)] int32 -> q [..., N, K] int8 in [-8, 7]."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)  # [8]
    u = (packed[..., None] >> shifts) & 0xF  # [..., N, KW, 8]
    return (u.flatten(-2)[..., :k] - OFFSET).to(torch.int8)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, k: int, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[..., N, K] in dtype: q * scale of its group, computed in fp32 (exact: 4-bit x 8-bit significands).
    The group size is explicit: with a partial last group (K=704, group 128) the scale's width alone
    does not say it."""
    q = unpack_int4(packed, k).float()  # [..., N, K]
    s = scale.float().repeat_interleave(group_size, dim=-1)[..., :k]  # [..., N, K]
    return (q * s).to(dtype)


def _kernel_ok(p: KernelPolicy, x2: torch.Tensor, max_rows: int) -> bool:
    # The int4 library is built and loaded on its own (ops/cpu_int4.py); the policy's switches still decide.
    return x2.shape[0] <= max_rows and x2.dtype is torch.bfloat16 and x2.device.type == "cpu" and cpu_int4.available(p)


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, k: int, group_size: int,
                tier: str | None = None, policy: KernelPolicy | None = None) -> torch.Tensor:
    """y = x W^T, W the 4-bit [N, K] matrix. x [..., K] -> [..., N] in x's dtype. Few bf16 CPU rows: the
    kernel (fp32 accumulation, one rounding); more: W dequantised (kernel or torch, the same bf16 values:
    q * scale rounded once, an error of 2^-9 relative per weight, far below 4-bit's), one torch matmul."""
    p = policy or KernelPolicy.default()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)  # [M, K]
    n = packed.shape[0]
    if _kernel_ok(p, x2, p.int4_gemv_max_rows):
        y = cpu_int4.gemv_int4(packed, scale, group_size, x2, tier=tier or cpu_int4.tier_for(p))  # [M, N]
    elif _kernel_ok(p, x2, x2.shape[0]) and packed.is_contiguous() and scale.is_contiguous():
        y = F.linear(x2, cpu_int4.dequantize_bf16(packed, scale, k, group_size))
    else:
        y = F.linear(x2, dequantize_int4(packed, scale, k, group_size, x2.dtype))
    return y.reshape(*lead, n)


def moe_experts_int4(
    x: torch.Tensor,
    gate_up_p: torch.Tensor,
    gate_up_s: torch.Tensor,
    down_p: torch.Tensor,
    down_s: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    group_size: int,
    tier: str | None = None,
    policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """The chosen experts only. x [T, H]; gate_up_p [E, 2I, ceil(H/8)] (gate rows first) with gate_up_s
    [E, 2I, ceil(H/G)]; down_p [E, H, ceil(I/8)] with down_s [E, H, ceil(I/G)]; topk_idx [T, K] int64;
    topk_w [T, K] fp32 -> [T, H] in x's dtype. Few bf16 CPU tokens: two kernel calls (every (token,
    expert) product, each chosen expert read once), the routing-weighted sum in fp32, one rounding.
    Otherwise grouped by expert, each active expert dequantised once (ops.moe.moe_grouped's order)."""
    t, k = topk_idx.shape
    h = x.shape[1]
    i2 = gate_up_p.shape[1]
    if t == 0:
        return torch.zeros_like(x)
    p = policy or KernelPolicy.default()
    if _kernel_ok(p, x, p.int4_moe_max_tokens):
        tier = tier or cpu_int4.tier_for(p)
        gu = cpu_int4.gemv_int4_experts(gate_up_p, gate_up_s, group_size, topk_idx, x, tier=tier)
        act = gelu_tanh_mul(*gu.chunk(2, dim=-1), p).reshape(t * k, -1)  # [T*K, I]
        y = cpu_int4.gemv_int4_experts(down_p, down_s, group_size, topk_idx.reshape(t * k, 1),
                                       act, torch.float32, tier=tier)  # [T*K, 1, H] fp32
        return torch.bmm(topk_w[:, None, :].float(), y.view(t, k, h)).view(t, h).to(x.dtype)
    return moe_grouped_by(
        x, topk_idx, topk_w, gate_up_p.shape[0],
        lambda e, xs: int4_linear(xs, gate_up_p[e], gate_up_s[e], h, group_size, tier, p),  # [n, 2I]
        lambda e, act: int4_linear(act, down_p[e], down_s[e], i2 // 2, group_size, tier, p),  # [n, H]
        policy=p,
    )
