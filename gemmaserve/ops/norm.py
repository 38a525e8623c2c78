"""RMSNorm as Gemma 4 defines it: fp32 statistics, weight multiplied directly (not 1 + w)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Normalise over the last dim in fp32 and cast back to x's dtype.

    x: [..., D]; weight: [D] or None (the weightless form used for v and the router input).
    Same math as transformers' Gemma4RMSNorm (x * (mean(x^2) + eps)^-0.5 * w, all fp32); the fused
    kernel gives identical fp32 results in far fewer dispatched ops.
    """
    w = None if weight is None else weight.float()
    return F.rms_norm(x.float(), (x.shape[-1],), w, eps).to(x.dtype)
