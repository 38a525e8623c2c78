"""Batch-invariant forms of the ops whose rounding depends on batch shape: each row's result is a
function of that row alone, so a request's tokens do not depend on its batch mates, chunking or cache
hits (the engine's deterministic mode).

Why the normal paths vary: torch's GEMMs block and split K by problem shape, the fast paths switch
kernels by row count (GEMV up to 32 rows, oneDNN above), SDPA over a prefill reduces in other orders
than the decode kernel, and vectorised transcendental functions take a scalar tail at shape-dependent
places. Here every matmul is the GEMV kernel (fixed k order per row at any row count, rows split only
across threads over N), every attention row is the one-query decode kernel, and transcendental
elementwise ops run on fixed per-row shapes."""

from __future__ import annotations

import torch

from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KernelPolicy

# RoPE tables grow in blocks of this many positions: a position's angles are always computed by the same
# [ROPE_BLOCK, D] op, whichever batch first needed them.
ROPE_BLOCK = 64


def kernels_ok(policy: KernelPolicy | None, *tensors: torch.Tensor) -> KernelPolicy | None:
    """The policy when the invariant kernels take these tensors (bf16, CPU, contiguous, the GEMV family on,
    library built: policy.takes), else None."""
    p = policy or KernelPolicy.default()
    return p if p.takes("gemv", *tensors) else None


def linear(x: torch.Tensor, weight: torch.Tensor, policy: KernelPolicy | None = None) -> torch.Tensor:
    """x [T, in] @ weight[out, in]^T -> [T, out], each row computed alike at any T: the GEMV kernel for
    bf16 (8 or 32 rows per weight pass, every row's sum in the same k order), else one torch.mv per row."""
    p = kernels_ok(policy, weight)
    if x.dim() == 2 and p is not None and x.dtype is torch.bfloat16 and x.device.type == "cpu":
        return cpu_kernels.gemv(p.lib, weight, x)  # [T, out]
    if x.shape[0] == 0:
        return x.new_empty(0, weight.shape[0])
    return torch.stack([torch.mv(weight, row) for row in x])  # [T, out]: the same op for every row


def geglu(gate_up: torch.Tensor, policy: KernelPolicy | None = None) -> torch.Tensor:
    """gate_up [T, 2W] (gate first) -> bf16(gelu_tanh(gate)) * up [T, W], per row: the kernel's fixed
    per-row vector/tail split, or torch's ops on one row at a time."""
    p = kernels_ok(policy, gate_up)
    if gate_up.dim() == 2 and p is not None:
        return cpu_kernels.geglu(p.lib, gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.stack([torch.nn.functional.gelu(g, approximate="tanh") * u for g, u in zip(gate, up)])


def moe_experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor,
                topk_w: torch.Tensor, policy: KernelPolicy | None = None) -> torch.Tensor:
    """The MoE block's expert sum per token, independent of which other tokens chose which experts:
    x [T, H]; gate_up [E, 2I, H]; down [E, H, I]; topk_idx [T, K]; topk_w [T, K] fp32 -> [T, H]. Each
    (token, expert) product is a GEMV-kernel row (fp32 out for the down projection), the K
    contributions are weighted and summed in fp32 in slot order, then rounded once."""
    t, k = topk_idx.shape
    if t == 0:
        return torch.zeros_like(x)
    p = kernels_ok(policy, x, gate_up, down)
    if p is not None:
        gu = cpu_kernels.gemv_experts(p.lib, gate_up, topk_idx, x, check=False)  # [T, K, 2I]
        act = cpu_kernels.geglu(p.lib, gu.view(t * k, -1))  # [T*K, I]
        y = cpu_kernels.gemv_experts(p.lib, down, topk_idx.reshape(t * k, 1), act, torch.float32, check=False)  # [T*K, 1, H]
    else:
        rows = []
        for ti in range(t):
            for e in topk_idx[ti].tolist():
                rows.append(linear(geglu(linear(x[ti : ti + 1], gate_up[e], policy), policy), down[e], policy).float()[0])
        y = torch.stack(rows)  # [T*K, H]
    y = y.view(t, k, -1)  # [T, K, H] fp32
    acc = y[:, 0] * topk_w[:, :1]
    for j in range(1, k):  # elementwise fp32 products and sums: exact per element, fixed order
        acc = acc + y[:, j] * topk_w[:, j : j + 1]
    return acc.to(x.dtype)


def row_sum(w: torch.Tensor) -> torch.Tensor:
    """w [T, K] -> [T, 1], summed left to right with elementwise adds (no reduction kernel whose
    vectorisation could depend on T)."""
    acc = w[:, :1]
    for j in range(1, w.shape[1]):
        acc = acc + w[:, j : j + 1]
    return acc


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """tanh(logits / cap) * cap per row of logits [S, V] fp32: one [V] op per row, so a row's values
    never depend on where a vector loop's tail or a thread's share fell in a larger tensor."""
    return torch.stack([torch.tanh(row / cap) * cap for row in logits]) if logits.shape[0] else logits


class RopeTable:
    """cos / signed sin for any positions, each position's values computed once by the same
    [ROPE_BLOCK, D] op (rope_fn over that block's positions) and gathered per step."""

    def __init__(self, rope_fn) -> None:
        # rope_fn(positions [N] int64) -> (cos, sin_signed) each [N, 1, D]
        self._fn = rope_fn
        self._cos: torch.Tensor | None = None  # [P, 1, D] for positions 0..P-1
        self._sin: torch.Tensor | None = None

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] int64 -> (cos, sin_signed) [T, 1, D], contiguous."""
        have = 0 if self._cos is None else self._cos.shape[0]
        need = int(positions.max()) + 1 if positions.numel() else 0
        if need > have:
            blocks = []
            for start in range(have, need, ROPE_BLOCK):
                pos = torch.arange(start, start + ROPE_BLOCK, dtype=torch.int64, device=positions.device)
                blocks.append(self._fn(pos))
            cos = torch.cat([b[0] for b in blocks])
            sin = torch.cat([b[1] for b in blocks])
            self._cos = cos if self._cos is None else torch.cat([self._cos, cos])
            self._sin = sin if self._sin is None else torch.cat([self._sin, sin])
        return self._cos.index_select(0, positions), self._sin.index_select(0, positions)
