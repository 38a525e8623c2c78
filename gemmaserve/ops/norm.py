"""RMSNorm as Gemma 4 defines it: fp32 statistics, weight multiplied directly (not 1 + w)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Normalise over the last dim in fp32 and cast back to x's dtype.

    x: [..., D]; weight: [D] or None (the weightless form used for v and the router input).
    Same math as transformers' Gemma4RMSNorm (x * (mean(x^2) + eps)^-0.5 * w, all in fp32); the
    fused kernel upcasts reduced-precision inputs internally (bf16 results are bit-identical to the
    explicit fp32 round trip) in far fewer dispatched ops.
    """
    d = x.shape[-1]
    if weight is None or weight.dtype == x.dtype:
        return F.rms_norm(x, (d,), weight, eps)
    return F.rms_norm(x.float(), (d,), weight.float(), eps).to(x.dtype)
