"""GeGLU activation gelu_tanh(gate) * up, on the CPU kernels for prefill-sized bf16 inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_gemv

# Inputs of at least this many gate elements (prefill: 512 tokens x 512+ columns) use the threaded
# kernel: one pass instead of torch's gelu and mul passes over [T, W] (each a separate op with its own
# bf16 rounding, which the kernel reproduces). Decode sizes stay on torch here (the one-call decode
# layer has its own). 0 = always torch.
KERNEL_MIN_NUMEL = 1 << 16


def gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up [T, W] -> bf16(bf16(gelu_tanh(gate)) * up) [T, W]. The kernel path needs gate and up
    to be the two halves of one [T, 2W] row-major tensor (what chunk(2, -1) of a fused gate_up
    projection gives); anything else runs torch's ops."""
    if (
        KERNEL_MIN_NUMEL
        and gate.dtype is torch.bfloat16
        and up.dtype is torch.bfloat16
        and gate.dim() == 2
        and gate.shape == up.shape
        and gate.numel() >= KERNEL_MIN_NUMEL
        and gate.device.type == "cpu"
        and gate.stride(1) == 1
        and up.stride() == gate.stride()
        and up.data_ptr() == gate.data_ptr() + gate.shape[1] * gate.element_size()
        and cpu_gemv.available()
    ):
        t, w = gate.shape
        out = torch.empty(t, w, dtype=torch.bfloat16)  # [T, W]
        cpu_gemv.lib().gs_geglu_bf16(gate.data_ptr(), t, gate.stride(0), w, out.data_ptr())
        return out
    return F.gelu(gate, approximate="tanh") * up


def geglu_weighted_cols(gu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The padded MoE path's weighted activation: gu [E, 2I, n] (each expert's gate rows, then its up
    rows, one column per token slot), w [E, n] routing weights in gu's dtype -> [E, I, n] =
    bf16(bf16(gelu_tanh(gate)) * up) * w per column, rounded as torch's gelu, mul and mul round. bf16
    contiguous CPU inputs take one threaded kernel pass (ops/csrc/decode_bf16.cpp) instead of three
    torch passes; anything else runs torch's ops."""
    e, two_i, n = gu.shape
    if KERNEL_MIN_NUMEL and w.shape == (e, n) and cpu_gemv.bf16_contiguous_cpu(gu, w):
        out = torch.empty(e, two_i // 2, n, dtype=torch.bfloat16)  # [E, I, n]
        cpu_gemv.lib().gs_geglu_cols_bf16(gu.data_ptr(), e, two_i // 2, n, w.data_ptr(), out.data_ptr())
        return out
    gate, up = gu.chunk(2, dim=1)  # [E, I, n] each
    return gelu_tanh_mul(gate, up) * w.view(e, 1, n)
