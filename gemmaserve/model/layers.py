"""Building blocks of the Gemma 4 decoder: uninitialised bias-free linear, RMSNorm, dense GeGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemmaserve.ops.linear import linear
from gemmaserve.ops.norm import rms_norm


def empty_param(*shape: int, dtype: torch.dtype, device: torch.device | str) -> nn.Parameter:
    """An uninitialised, inference-only parameter: no random-init cost, so the 26B shape builds fast
    (and on device="meta" without memory)."""
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Linear(nn.Module):
    """y = x W^T with W [out, in]; state_dict key `weight` like nn.Linear, but never initialised."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.weight = empty_param(out_features, in_features, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


class RMSNorm(nn.Module):
    """Gemma 4 RMSNorm with a learned weight (multiplied directly, not 1 + w)."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = empty_param(dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class GeGLUMLP(nn.Module):
    """Dense MLP: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, hidden: int, width: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, width, dtype, device)
        self.up_proj = Linear(hidden, width, dtype, device)
        self.down_proj = Linear(width, hidden, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, H] -> [T, H]
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))
