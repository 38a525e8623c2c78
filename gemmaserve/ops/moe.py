"""MoE expert compute that touches only the chosen experts: a gather path for few tokens and a
sorted/grouped path (one matmul pair per active expert) for many."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.activation import geglu_weighted_cols, gelu_tanh_mul
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.linear import linear

# The path thresholds (moe_grouped_min_tokens, moe_padded_*, moe_gemv_max_tokens, grouped_mm_cpu,
# graph_gather_passes) live on ops.dispatch.KernelPolicy with their measurements.


def _act(gate: torch.Tensor, up: torch.Tensor, policy: KernelPolicy | None = None) -> torch.Tensor:
    return gelu_tanh_mul(gate, up, policy)


def moe_gather(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """Per token, index the chosen experts' weights and apply them; no sorting, no scatter.

    x [T, H]; gate_up [E, 2I, H] (gate rows first); down [E, H, I]; topk_idx [T, K] int64;
    topk_w [T, K] fp32 -> [T, H] in x's dtype. On CPU each (token, expert) pair multiplies by a
    *view* of the expert's weights (an indexed copy of bf16 weights costs more than the matmul);
    elsewhere one batched matmul over indexed weights avoids per-pair launches and a host sync.
    Both are for few tokens (decode); see KernelPolicy.moe_grouped_min_tokens."""
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
            gate, up = linear(xt, gate_up[e], policy).chunk(2, dim=-1)  # [1, I] each; gate_up[e] is a view
            y = linear(_act(gate, up, policy), down[e], policy) * we  # [1, H]; the scalar product rounds once
            acc = y if acc is None else acc + y
        out[ti] = acc[0]
    return out


def moe_gather_gemv(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    policy: KernelPolicy,
) -> torch.Tensor:
    """The gather path on the CPU GEMV kernel: one call for every (token, expert) gate_up product, one
    for every down product (fp32 out), then the routing-weighted sum in fp32 and one bf16 rounding.
    Same contract as moe_gather; needs bf16 contiguous expert tensors and policy.lib."""
    t, k = topk_idx.shape
    gate, up = cpu_kernels.gemv_experts(policy.lib, gate_up, topk_idx, x, check=False).chunk(2, dim=-1)  # [T, K, I] each
    act = _act(gate, up, policy).view(t * k, -1)  # [T*K, I]
    y = cpu_kernels.gemv_experts(policy.lib, down, topk_idx.view(t * k, 1), act, torch.float32, check=False)  # [T*K, 1, H]
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


def grouped_loop(
    x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, num_experts: int,
    expert: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor], counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-expert loop every grouped MoE form shares (bf16 moe_grouped, int8 moe_experts_int8):
    sort the (token, expert) pairs by expert, call `expert(e, xs, ws)` once per active expert on its
    contiguous slice (xs [n, H] the tokens, ws [n] fp32 their routing weights; it returns the weighted
    [n, H] result in x's dtype), and add the results back per token. x [T, H]; topk_idx [T, K] int64;
    topk_w [T, K] fp32 -> [T, H]; `counts` [E]: the pairs per expert when the caller has them."""
    k = topk_idx.shape[1]
    flat = topk_idx.reshape(-1)  # [T*K]
    order = torch.argsort(flat, stable=True)  # [T*K] pair ids grouped by expert
    if counts is None:
        counts = expert_counts(topk_idx, num_experts)
    tokens = order // k  # [T*K] token of each sorted pair
    xs = x.index_select(0, tokens)  # [T*K, H]
    ws = topk_w.reshape(-1)[order]  # [T*K] fp32 routing weight of each sorted pair
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts.tolist()):  # host sync, one per layer
        if n == 0:
            continue
        end = start + n
        ys[start:end] = expert(e, xs[start:end], ws[start:end])  # [n, H]
        start = end
    out = torch.zeros_like(x)
    out.index_add_(0, tokens, ys)
    return out


def moe_grouped(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    counts: torch.Tensor | None = None, policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """One gate_up and one down matmul per active expert on its contiguous slice (grouped_loop). Same
    shapes/contract as moe_gather; `counts` [E]: the pairs per expert when the caller already has them
    (expert_counts). Weighting the [n, I] activations before the down projection (it is linear) is cheaper
    than weighting the [n, H] outputs; the weight rounds to x's dtype first."""
    return moe_grouped_by(x, topk_idx, topk_w, gate_up.shape[0], lambda e, xs: linear(xs, gate_up[e], policy),
                          lambda e, act: linear(act, down[e], policy), counts, policy)


def moe_grouped_by(
    x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, num_experts: int,
    gate_up_fn: Callable[[int, torch.Tensor], torch.Tensor], down_fn: Callable[[int, torch.Tensor], torch.Tensor],
    counts: torch.Tensor | None = None, policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """moe_grouped for any weight format: gate_up_fn(e, xs [n, H]) -> [n, 2I] and down_fn(e, act [n, I]) ->
    [n, H] apply expert e's projections (bf16 matrices, or 4-bit ones in ops/int4.py); the routing weight
    scales the activations before the down projection, as in moe_grouped."""

    def expert(e: int, xs: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up_fn(e, xs).chunk(2, dim=-1)  # [n, I] each
        return down_fn(e, _act(gate, up, policy) * ws[:, None].to(x.dtype))  # [n, H]

    return grouped_loop(x, topk_idx, topk_w, num_experts, expert, counts)


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


def grouped_mm_ok(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor | None = None,
                  policy: KernelPolicy | None = None) -> bool:
    """Whether moe_grouped_mm applies: the policy's switch, bf16 (the grouped GEMM's dtype) for x and
    both expert tensors, and on CUDA a Hopper-class device (sm90+, where torch ships the grouped
    kernel); on CPU only with policy.grouped_mm_cpu."""
    p = policy or KernelPolicy.default()
    tensors = (x, gate_up) if down is None else (x, gate_up, down)
    if not p.grouped_mm or not all(t.dtype is torch.bfloat16 for t in tensors):
        return False
    if x.device.type == "cuda":
        return _cuda_grouped_mm(x.device.index)
    return p.grouped_mm_cpu and x.device.type == "cpu" and hasattr(torch, "_grouped_mm")


@functools.lru_cache(maxsize=None)
def _cuda_grouped_mm(index: int | None) -> bool:
    # Asked per layer and step: the answer is fixed per device.
    return hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability(index) >= (9, 0)


def moe_padded(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    counts: torch.Tensor | None = None, policy: KernelPolicy | None = None,
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
    act = geglu_weighted_cols(gu, wp.view(e, n), policy)  # [E, I, n]; padding columns stay 0
    y = torch.bmm(down, act).transpose(1, 2).reshape(e * n, h)  # [E*n, H]
    out = torch.zeros_like(x)
    out.index_add_(0, tokens, y.index_select(0, dest))
    return out


def expert_counts(topk_idx: torch.Tensor, e: int) -> torch.Tensor:
    """[E] how many (token, slot) pairs chose each expert."""
    return torch.bincount(topk_idx.reshape(-1), minlength=e)


def _padded_pays(counts: torch.Tensor, t: int, k: int, policy: KernelPolicy) -> bool:
    """CPU: whether moe_padded beats moe_grouped for this routing (policy.moe_padded_*); counts [E]
    from expert_counts, t tokens of k experts each."""
    e = counts.shape[0]
    if t <= policy.moe_padded_max_tokens and int((counts > 0).sum()) >= policy.moe_padded_min_active * e:
        return True
    return e * int(counts.max()) <= policy.moe_padded_max_waste * t * k


def moe_experts(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """The eager (host-synchronising) MoE: pick the path by token count and, on CPU, by how the tokens
    spread over the experts (KernelPolicy's moe_* thresholds)."""
    p = policy or KernelPolicy.default()
    t = x.shape[0]
    if t == 0:  # no rows (a last layer that keeps none): nothing to route, and the paths assume rows
        return torch.zeros_like(x)
    if t <= p.moe_gemv_max_tokens and p.takes("moe_gemv", gate_up, down, strided=(x,)):
        return moe_gather_gemv(x, gate_up, down, topk_idx, topk_w, p)
    if x.device.type == "cuda" and grouped_mm_ok(x, gate_up, down, p):
        # Any token count: one launch per projection, only the chosen experts read, no sync.
        return moe_grouped_mm(x, gate_up, down, topk_idx, topk_w)
    if t >= p.moe_grouped_min_tokens:
        counts = expert_counts(topk_idx, gate_up.shape[0])  # [E], shared by the choice and the path
        if x.device.type == "cpu" and _padded_pays(counts, t, topk_idx.shape[1], p):
            return moe_padded(x, gate_up, down, topk_idx, topk_w, counts, p)
        return moe_grouped(x, gate_up, down, topk_idx, topk_w, counts, p)
    return moe_gather(x, gate_up, down, topk_idx, topk_w, p)


def moe_graph(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """The MoE of a graph-captured decode step: no host sync, the form picked from shapes alone. The
    gather form reads each chosen expert's weights, writes an indexed copy and reads that again (about
    policy.graph_gather_passes passes per (token, expert) pair); the capacity form reads all E experts
    once. So gather while passes * T * K < E: on 26B-A4B (128 experts, top-8) up to 5 tokens, where
    reading all experts would cost 16x at T=1. Same contract as moe_experts."""
    p = policy or KernelPolicy.default()
    if grouped_mm_ok(x, gate_up, down, p):  # bf16 on sm90+: the grouped GEMM beats both forms below
        return moe_grouped_mm(x, gate_up, down, topk_idx, topk_w)
    t, k = topk_idx.shape
    if p.graph_gather_passes * t * k < gate_up.shape[0]:
        return moe_gather_batched(x, gate_up, down, topk_idx, topk_w)
    return moe_capacity(x, gate_up, down, topk_idx, topk_w)


def moe_capacity(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor
) -> torch.Tensor:
    """Capture-safe MoE for decode graphs: ops.moe.moe_padded with the capacity fixed at T (a token
    picks an expert at most once, so no expert gets more than T rows) instead of the busiest
    expert's count, which would need a host sync. Two batched matmuls over all E experts; the routing
    weight is applied before the down projection as in moe_padded, the K contributions are summed
    in a fixed order (one rounding, where moe_padded rounds after each add).

    x [T, H]; gate_up [E, 2I, H]; down [E, H, I]; topk_idx [T, K] int64; topk_w [T, K] fp32 -> [T, H]."""
    t, k = topk_idx.shape
    e, _, h = gate_up.shape
    flat = topk_idx.reshape(-1)  # [T*K]
    order = torch.argsort(flat, stable=True)  # [T*K] pair ids grouped by expert
    es = flat[order]  # [T*K] expert of each sorted pair
    # Rank within the expert = index in the sorted list - index of the expert's first pair. Not via
    # bincount: on CUDA it reads the input's max back to the host to size its output.
    rank = torch.arange(t * k, device=x.device) - torch.searchsorted(es, es)  # [T*K] slot in its expert
    dest = es * t + rank  # [T*K] padded row of each sorted pair
    tokens = order // k  # [T*K] token of each sorted pair
    xp = x.new_zeros(e * t, h).index_copy_(0, dest, x.index_select(0, tokens))  # [E*T, H]
    wp = x.new_zeros(e * t).index_copy_(0, dest, topk_w.reshape(-1)[order].to(x.dtype))  # [E*T]
    gate, up = torch.bmm(gate_up, xp.view(e, t, h).transpose(1, 2)).chunk(2, dim=1)  # [E, I, T] each
    act = F.gelu(gate, approximate="tanh") * up * wp.view(e, 1, t)  # [E, I, T]; padding rows stay 0
    y = torch.bmm(down, act).transpose(1, 2).reshape(e * t, h)  # [E*T, H]
    # Unsort into (token, k) pairs and sum over k: unlike index_add_ (atomics on CUDA) the order of
    # the additions is fixed, so a replayed graph and an eager run give the same bits.
    pairs = torch.empty_like(xp[: t * k]).index_copy_(0, order, y.index_select(0, dest))  # [T*K, H]
    return pairs.view(t, k, h).sum(dim=1)
