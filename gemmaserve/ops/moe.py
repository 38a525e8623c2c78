"""MoE expert compute that touches only the chosen experts: a gather path for few tokens and a
sorted/grouped path (one matmul pair per active expert) for many."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

from gemmaserve.ops import cpu_gemv
from gemmaserve.ops.activation import geglu_weighted_cols, gelu_tanh_mul
from gemmaserve.ops.linear import linear

# Token count at or above which the grouped path is used: benchmarks/probes/ops_moe.py on the bench shape
# (hidden 1024, 32 experts top-4, width 512, bf16, 2 CPU threads, min wall ms) measured gather vs
# grouped 0.58/0.62 at 1 token, 1.14/1.22 at 2, 1.69/1.65 at 3, 4.5/2.9 at 8, 78/9.6 at 128.
# On CUDA (sm90+, bf16) the grouped GEMM below replaces the gather and grouped paths at every count.
GROUPED_MIN_TOKENS = 3
# Up to this many tokens, when at least PADDED_MIN_ACTIVE of the experts are chosen, the padded path
# (two batched matmuls over all experts) replaces the grouped loop: one long weight stream and ~15
# ops instead of ~13 ops per active expert. Bench shape, bf16, 2 threads, ms grouped vs padded:
# 8 tokens (21 of 32 experts active) 4.87/5.13, 16 (30) 8.16/6.04, 32 (32) 7.81/5.94, 64 (32)
# 8.33/6.52. Past 64 tokens padding to the busiest expert can multiply the FLOPs: see PADDED_MAX_WASTE.
PADDED_MAX_TOKENS = 64
PADDED_MIN_ACTIVE = 0.75
# At any token count on CPU the padded path also replaces the grouped loop when padding adds at most
# this factor of rows (E * busiest expert's count <= PADDED_MAX_WASTE * T * K): a prefill whose tokens
# spread evenly over the experts. Bench shape, bf16, 2 threads, ms grouped vs padded (padding factor):
# 128 tokens 12.2/9.5 (1.38), 10.0/9.3 (2.31), 8.5/12.5 (3.81); 512 tokens 20.6/17.8 (1.20), 20.1/27.2
# (2.41); 1024 tokens 27.0/19.3 (1.14), 27.7/37.6 (2.41).
PADDED_MAX_WASTE = 1.5
# Up to this many tokens, bf16 on CPU, the GEMV kernel's expert gather (ops/cpu_gemv.py) replaces every
# path above: two calls per layer, each chosen expert read once for all tokens that chose it; 0 = off.
# Bench shape, 2 threads, quiet machine, min ms gemv vs padded: 8 tokens 1.95/3.33, 16 2.52/3.38,
# 32 3.23/3.67, 64 4.97/4.03; decode steps of 24 / 32 rows (decode_bench) 107.9 -> 103.1 and
# 109.9 -> 106.3 ms when raised from 8 to 32.
GEMV_MAX_TOKENS = 32
# The grouped GEMM on CPU measured mixed against the per-expert loop (bench shape, 2 threads: 15%
# faster at 256-512 tokens, 5-25% slower at 16 and 2048, noisy), so CPU keeps the loop.
GROUPED_MM_CPU = False
# Master switch of the grouped GEMM path: GEMMASERVE_GROUPED_MM=0 turns it off (an escape hatch should
# a torch build's grouped kernel misbehave); benchmarks/probes/profile_prefill.py --ab flips it for the A/B.
GROUPED_MM = os.environ.get("GEMMASERVE_GROUPED_MM", "1") != "0"


def _act(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return gelu_tanh_mul(gate, up)


def moe_gather(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor
) -> torch.Tensor:
    """Per token, index the chosen experts' weights and apply them; no sorting, no scatter.

    x [T, H]; gate_up [E, 2I, H] (gate rows first); down [E, H, I]; topk_idx [T, K] int64;
    topk_w [T, K] fp32 -> [T, H] in x's dtype. On CPU each (token, expert) pair multiplies by a
    *view* of the expert's weights (an indexed copy of bf16 weights costs more than the matmul);
    elsewhere one batched matmul over indexed weights avoids per-pair launches and a host sync.
    Both are for few tokens (decode); see GROUPED_MIN_TOKENS."""
    if x.device.type != "cpu":
        return moe_gather_batched(x, gate_up, down, topk_idx, topk_w)
    t = topk_idx.shape[0]
    experts, weights = topk_idx.tolist(), topk_w.tolist()  # host lists: CPU tensors, no real sync
    if t == 1:
        # The single-stream decode step: plain mv calls on vectors, the same arithmetic as below in
        # fewer dispatched ops (no row views, no unsqueeze per expert).
        xv = x[0]  # [H]
        acc = None
        for e, we in zip(experts[0], weights[0]):
            gate, up = torch.mv(gate_up[e], xv).chunk(2)  # [I] each
            y = torch.mv(down[e], _act(gate, up)) * we  # [H]
            acc = y if acc is None else acc + y
        return acc[None]
    out = torch.empty_like(x)
    for ti in range(t):
        xt = x[ti : ti + 1]  # [1, H]
        acc = None
        for e, we in zip(experts[ti], weights[ti]):
            gate, up = linear(xt, gate_up[e]).chunk(2, dim=-1)  # [1, I] each; gate_up[e] is a view
            y = linear(_act(gate, up), down[e]) * we  # [1, H]; the scalar product rounds once
            acc = y if acc is None else acc + y
        out[ti] = acc[0]
    return out


def moe_gather_gemv(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor
) -> torch.Tensor:
    """The gather path on the CPU GEMV kernel: one call for every (token, expert) gate_up product, one
    for every down product (fp32 out), then the routing-weighted sum in fp32 and one bf16 rounding.
    Same contract as moe_gather; needs bf16 contiguous expert tensors and cpu_gemv.available()."""
    t, k = topk_idx.shape
    gate, up = cpu_gemv.gemv_experts(gate_up, topk_idx, x, check=False).chunk(2, dim=-1)  # [T, K, I] each
    act = _act(gate, up).view(t * k, -1)  # [T*K, I]
    y = cpu_gemv.gemv_experts(down, topk_idx.view(t * k, 1), act, torch.float32, check=False)  # [T*K, 1, H]
    return torch.bmm(topk_w[:, None, :], y.view(t, k, -1)).view(t, -1).to(x.dtype)  # [T, H]


def moe_gather_batched(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor
) -> torch.Tensor:
    """The accelerator form of the gather path: one batched matmul over indexed (copied) expert
    weights, no host sync. Same contract as moe_gather."""
    t, k = topk_idx.shape
    flat = topk_idx.reshape(-1)  # [T*K]
    xk = x[:, None, :].expand(t, k, x.shape[1]).reshape(t * k, 1, x.shape[1])  # [T*K, 1, H]
    gate, up = torch.bmm(xk, gate_up[flat].transpose(1, 2)).chunk(2, dim=-1)  # [T*K, 1, I] each
    y = torch.bmm(_act(gate, up), down[flat].transpose(1, 2))  # [T*K, 1, H]
    # Weight in fp32 (router weights are fp32), round once, then sum the K contributions.
    return (y.view(t, k, -1) * topk_w[:, :, None]).to(x.dtype).sum(dim=1)


def moe_grouped(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sort (token, expert) pairs by expert and run one gate_up and one down matmul per active
    expert on its contiguous slice. Same shapes/contract as moe_gather; `counts` [E]: the pairs per
    expert when the caller already has them (expert_counts)."""
    return moe_grouped_by(x, topk_idx, topk_w, gate_up.shape[0], lambda e, xs: linear(xs, gate_up[e]),
                          lambda e, act: linear(act, down[e]), counts)


def moe_grouped_by(
    x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, num_experts: int,
    gate_up_fn: Callable[[int, torch.Tensor], torch.Tensor], down_fn: Callable[[int, torch.Tensor], torch.Tensor],
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """moe_grouped for any weight format: gate_up_fn(e, xs [n, H]) -> [n, 2I] and down_fn(e, act [n, I]) ->
    [n, H] apply expert e's projections (bf16 matrices, or 4-bit ones in ops/int4.py)."""
    t, k = topk_idx.shape
    flat = topk_idx.reshape(-1)  # [T*K]
    order = torch.argsort(flat, stable=True)  # [T*K] pair ids grouped by expert
    if counts is None:
        counts = expert_counts(topk_idx, num_experts)
    counts = counts.tolist()  # host sync, one per layer
    tokens = order // k  # [T*K] token of each sorted pair
    xs = x.index_select(0, tokens)  # [T*K, H]
    ws = topk_w.reshape(-1)[order, None].to(x.dtype)  # [T*K, 1] routing weight of each sorted pair
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        end = start + n
        gate, up = gate_up_fn(e, xs[start:end]).chunk(2, dim=-1)  # [n, I] each
        # Weighting the [n, I] activations before the down projection (it is linear) is cheaper than
        # weighting the [n, H] outputs.
        act = _act(gate, up) * ws[start:end]
        ys[start:end] = down_fn(e, act)  # [n, H]
        start = end
    out = torch.zeros_like(x)
    out.index_add_(0, tokens, ys)
    return out


def moe_grouped_mm(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor
) -> torch.Tensor:
    """Each projection as ONE grouped GEMM over the expert-sorted (token, expert) pairs
    (torch._grouped_mm): every chosen expert's weights read once, no per-expert loop, no weight
    copies and no host sync, so it is also capture-safe for CUDA graphs (group ends come from a
    device searchsorted; bincount would read its max back to the host). The routing weight scales
    the activations before the down projection (as moe_grouped); the K contributions of a token are
    summed in a fixed order with one rounding (no atomics), so graph replay and eager runs agree.

    x [T, H]; gate_up [E, 2I, H]; down [E, H, I]; topk_idx [T, K] int64; topk_w [T, K] fp32 -> [T, H]."""
    t, k = topk_idx.shape
    e, _, h = gate_up.shape
    flat = topk_idx.reshape(-1)  # [T*K]
    order = torch.argsort(flat, stable=True)  # [T*K] pair ids grouped by expert
    ends = torch.searchsorted(flat[order], torch.arange(e, device=x.device), right=True)  # [E] group ends
    xs = x.index_select(0, order // k)  # [T*K, H] token of each sorted pair
    ws = topk_w.reshape(-1)[order, None].to(x.dtype)  # [T*K, 1]
    offs = ends.to(torch.int32)
    # gate_up [E, 2I, H] transposed is the [E, H, 2I] column-major operand the grouped GEMM wants.
    gate, up = torch._grouped_mm(xs, gate_up.transpose(1, 2), offs=offs).chunk(2, dim=-1)  # [T*K, I] each
    act = (_act(gate, up) * ws).contiguous()  # [T*K, I]
    ys = torch._grouped_mm(act, down.transpose(1, 2), offs=offs)  # [T*K, H]
    pairs = torch.empty_like(ys).index_copy_(0, order, ys)  # [T*K, H] back in (token, k) order
    return pairs.view(t, k, h).sum(dim=1)


def grouped_mm_ok(x: torch.Tensor, gate_up: torch.Tensor) -> bool:
    """Whether moe_grouped_mm applies: bf16 (the grouped GEMM's dtype), and on CUDA a Hopper-class
    device (sm90+, where torch ships the grouped kernel)."""
    if not GROUPED_MM or x.dtype is not torch.bfloat16 or gate_up.dtype is not torch.bfloat16:
        return False
    if x.device.type == "cuda":
        return _cuda_grouped_mm(x.device.index)
    return GROUPED_MM_CPU and x.device.type == "cpu" and hasattr(torch, "_grouped_mm")


@functools.lru_cache(maxsize=None)
def _cuda_grouped_mm(index: int | None) -> bool:
    # Asked per layer and step: the answer is fixed per device.
    return hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability(index) >= (9, 0)


def moe_padded(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each expert's tokens padded with zero rows to the busiest expert's count n, then one batched
    matmul pair over *all* experts (idle ones included: use it when nearly all are chosen). Same
    contract and rounding points as moe_grouped (routing weight applied before the down projection);
    `counts` as in moe_grouped."""
    t, k = topk_idx.shape
    e, _, h = gate_up.shape
    flat = topk_idx.reshape(-1)  # [T*K]
    order = torch.argsort(flat, stable=True)  # [T*K] pair ids grouped by expert
    if counts is None:
        counts = expert_counts(topk_idx, e)  # [E]
    n = int(counts.max())  # host sync, one per layer (as in moe_grouped)
    es = flat[order]  # [T*K] expert of each sorted pair
    rank = torch.arange(t * k, device=x.device) - (torch.cumsum(counts, 0) - counts)[es]  # [T*K] slot in its expert
    dest = es * n + rank  # [T*K] padded row of each sorted pair
    tokens = order // k  # [T*K]
    xp = x.new_zeros(e * n, h).index_copy_(0, dest, x.index_select(0, tokens))  # [E*n, H]
    wp = x.new_zeros(e * n).index_copy_(0, dest, topk_w.reshape(-1)[order].to(x.dtype))  # [E*n]
    gu = torch.bmm(gate_up, xp.view(e, n, h).transpose(1, 2))  # [E, 2I, n]
    act = geglu_weighted_cols(gu, wp.view(e, n))  # [E, I, n]; padding columns stay 0
    y = torch.bmm(down, act).transpose(1, 2).reshape(e * n, h)  # [E*n, H]
    out = torch.zeros_like(x)
    out.index_add_(0, tokens, y.index_select(0, dest))
    return out


def expert_counts(topk_idx: torch.Tensor, e: int) -> torch.Tensor:
    """[E] how many (token, slot) pairs chose each expert."""
    return torch.bincount(topk_idx.reshape(-1), minlength=e)


def _padded_pays(counts: torch.Tensor, t: int, k: int) -> bool:
    """CPU: whether moe_padded beats moe_grouped for this routing (PADDED_MAX_TOKENS, PADDED_MIN_ACTIVE,
    PADDED_MAX_WASTE); counts [E] from expert_counts, t tokens of k experts each."""
    e = counts.shape[0]
    if t <= PADDED_MAX_TOKENS and int((counts > 0).sum()) >= PADDED_MIN_ACTIVE * e:
        return True
    return e * int(counts.max()) <= PADDED_MAX_WASTE * t * k


def moe_experts(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    grouped_min_tokens: int = GROUPED_MIN_TOKENS,
) -> torch.Tensor:
    """Pick the path by token count and, on CPU, how the tokens spread over the experts (see
    GROUPED_MIN_TOKENS, PADDED_MAX_TOKENS, PADDED_MAX_WASTE)."""
    t = x.shape[0]
    if t == 0:  # no rows (a last layer that keeps none): nothing to route, and the paths assume rows
        return torch.zeros_like(x)
    if (
        t <= GEMV_MAX_TOKENS
        and x.dtype is torch.bfloat16
        and x.device.type == "cpu"
        and gate_up.dtype is torch.bfloat16
        and gate_up.is_contiguous()
        and down.is_contiguous()
        and cpu_gemv.available()
    ):
        return moe_gather_gemv(x, gate_up, down, topk_idx, topk_w)
    if x.device.type == "cuda" and grouped_mm_ok(x, gate_up):
        # Any token count: one launch per projection, only the chosen experts read, no sync.
        return moe_grouped_mm(x, gate_up, down, topk_idx, topk_w)
    if t >= grouped_min_tokens:
        counts = expert_counts(topk_idx, gate_up.shape[0])  # [E], shared by the choice and the path
        if x.device.type == "cpu" and _padded_pays(counts, t, topk_idx.shape[1]):
            return moe_padded(x, gate_up, down, topk_idx, topk_w, counts)
        return moe_grouped(x, gate_up, down, topk_idx, topk_w, counts)
    return moe_gather(x, gate_up, down, topk_idx, topk_w)
