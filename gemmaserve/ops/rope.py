"""Rotary position embeddings: default RoPE (sliding layers) and proportional partial RoPE (full layers)."""

from __future__ import annotations

import torch


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2: every pair rotates. Returns [head_dim/2] fp32."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def proportional_inv_freq(head_dim: int, theta: float, partial_rotary_factor: float) -> torch.Tensor:
    """p-RoPE: only the first int(factor*head_dim/2) pairs rotate, and their exponent denominator is
    the *full* head_dim (transformers' "proportional" type); the other pairs get frequency 0, i.e.
    cos=1, sin=0, identity. Returns [head_dim/2] fp32."""
    angles = int(partial_rotary_factor * head_dim // 2)
    rotated = 1.0 / (theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / head_dim))
    return torch.cat([rotated, torch.zeros(head_dim // 2 - angles)])


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T] int -> (cos, sin) each [T, 1, head_dim] in `dtype`, rotate-half layout
    (cat(freqs, freqs)); angles are computed in fp32 then cast, as transformers does."""
    freqs = positions.float()[:, None] * inv_freq.to(positions.device, torch.float32)[None, :]  # [T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] (NeoX rotate-half pairs (j, j + D/2)); cos/sin [T, 1, D]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)  # [T, H, D]
    return x * cos + rotated * sin


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin [..., D] -> cat(-sin[..., :D/2], sin[..., D/2:]): the sign of rotate-half folded into the
    table once per step, so apply_rope_signed needs no negation or concatenation per layer."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def apply_rope_signed(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Same result as apply_rope (bit for bit: x2 * -s == -(x2 * s)) in fewer ops; x [T, H, D],
    cos/sin_signed [T, 1, D] from rope_cos_sin and signed_sin."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed
