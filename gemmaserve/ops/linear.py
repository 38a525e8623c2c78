"""Bias-free linear layer with a matrix-vector fast path for single-row inputs (CPU decode)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ weight[out, in]^T -> [..., out].

    A single row on CPU goes through torch.mv: for bf16 it reads the weight about 1.7x faster than
    the GEMM path (measured 3.0 vs 5.2 ms for a 32768x1024 LM head, one thread), and decode steps are
    nothing but such rows."""
    if x.dim() == 2 and x.shape[0] == 1 and x.device.type == "cpu":
        return torch.mv(weight, x[0])[None]
    return F.linear(x, weight)
