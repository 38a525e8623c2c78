"""RMSNorm as Gemma 4 defines it: fp32 statistics, weight multiplied directly (not 1 + w)."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Normalise over the last dim in fp32 and cast back to x's dtype.

    x: [..., D]; weight: [D] or None (the weightless form used for v and the router input).
    Matches transformers' Gemma4RMSNorm bit for bit in fp32: pow(mean + eps, -0.5), weight in fp32.
    """
    xf = x.float()
    out = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if weight is not None:
        out = out * weight.float()
    return out.to(x.dtype)
