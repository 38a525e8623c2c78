"""GeGLU activation gelu_tanh(gate) * up, on the CPU kernels for prefill-sized bf16 inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KernelPolicy


def gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor, policy: KernelPolicy | None = None) -> torch.Tensor:
    """gate, up [T, W] -> bf16(bf16(gelu_tanh(gate)) * up) [T, W]. The kernel path (policy "geglu", at
    least policy.geglu_min_numel elements) needs gate and up to be the two halves of one [T, 2W]
    row-major tensor (what chunk(2, -1) of a fused gate_up projection gives); anything else runs torch's ops."""
    p = policy or KernelPolicy.default()
    if (
        gate.dim() == 2
        and gate.shape == up.shape
        and gate.numel() >= p.geglu_min_numel
        and gate.stride(1) == 1
        and up.stride() == gate.stride()
        and up.data_ptr() == gate.data_ptr() + gate.shape[1] * gate.element_size()
        and p.takes("geglu", strided=(gate, up))
    ):
        return cpu_kernels.geglu(p.lib, torch.as_strided(gate, (gate.shape[0], 2 * gate.shape[1]), gate.stride()))
    return F.gelu(gate, approximate="tanh") * up


def geglu_weighted_cols(gu: torch.Tensor, w: torch.Tensor, policy: KernelPolicy | None = None) -> torch.Tensor:
    """The padded MoE path's weighted activation: gu [E, 2I, n] (each expert's gate rows, then its up
    rows, one column per token slot), w [E, n] routing weights in gu's dtype -> [E, I, n] =
    bf16(bf16(gelu_tanh(gate)) * up) * w per column, rounded as torch's gelu, mul and mul round. bf16
    contiguous CPU inputs take one threaded kernel pass (ops/csrc/decode_bf16.cpp) instead of three
    torch passes; anything else runs torch's ops."""
    e, two_i, n = gu.shape
    p = policy or KernelPolicy.default()
    if w.shape == (e, n) and p.takes("geglu", gu, w):
        return cpu_kernels.geglu_cols(p.lib, gu, w)
    gate, up = gu.chunk(2, dim=1)  # [E, I, n] each
    return gelu_tanh_mul(gate, up, p) * w.view(e, 1, n)
