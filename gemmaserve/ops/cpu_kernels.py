"""Python wrappers over the CPU kernel library's functions (ops/kernel_lib.py loads it): argument
checks, output allocation and the ctypes call. Each takes the KernelLib that KernelPolicy.lib hands out."""

from __future__ import annotations

import torch

from gemmaserve.ops.kernel_lib import KernelLib


def _check_w(w: torch.Tensor, ndim: int) -> None:
    if w.dim() != ndim or w.dtype != torch.bfloat16 or not w.is_cpu or not w.is_contiguous():
        raise ValueError(f"weight must be a contiguous {ndim}-D bf16 CPU tensor, got {w.dtype} {tuple(w.shape)}")


def _rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [..., K] -> [M, K] bf16 with unit stride on K (copies only when it must)."""
    if x.dtype != torch.bfloat16 or not x.is_cpu or x.shape[-1] != k:
        raise ValueError(f"x must be bf16 CPU [..., {k}], got {x.dtype} {tuple(x.shape)}")
    x2 = x if x.dim() == 2 else x.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < k):
        x2 = x2.contiguous()
    return x2


def gemv(lib: KernelLib, w: torch.Tensor, x: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x [..., K] @ w[N, K]^T -> [..., N] (bf16 or fp32 out), fp32 accumulation. Fast for up to
    lib.rows_per_pass rows of x. w must be contiguous bf16 on CPU; lib from KernelPolicy.lib."""
    # Kept to cheap attribute reads: the Python side costs ~3 us per call, ctypes ~1.3 us of it.
    _check_w(w, 2)
    n, k = w.shape
    if out_dtype is not torch.bfloat16 and out_dtype is not torch.float32:
        raise ValueError(f"out_dtype must be bf16 or fp32, got {out_dtype}")
    if x.dim() == 1:  # one row: skip the reshape/view round trip (each ~1 us)
        if x.dtype != torch.bfloat16 or not x.is_cpu or x.shape[0] != k:
            raise ValueError(f"x must be bf16 CPU [..., {k}], got {x.dtype} {tuple(x.shape)}")
        x2, m, xs = (x if x.stride(0) == 1 else x.contiguous()), 1, k
        out = torch.empty(n, dtype=out_dtype)  # [N]
    else:
        x2 = _rows(x, k)
        m, xs = x2.shape[0], x2.stride(0)
        out = torch.empty(m, n, dtype=out_dtype)  # [M, N]
    if m and n:
        if k == 0:
            out.zero_()
        else:
            lib.fn.gs_gemv_bf16(w.data_ptr(), n, k, x2.data_ptr(), m, xs, out.data_ptr(),
                              out_dtype is torch.float32, torch.get_num_threads())
    return out if x.dim() <= 2 else out.view(*x.shape[:-1], n)


def _expert_ids(expert_ids: torch.Tensor, m: int, e: int, out_dtype: torch.dtype, check: bool) -> torch.Tensor:
    """The expert-gather calls' shared argument checks: ids [M, topk] as contiguous int64 (in [0, E)
    when `check`), and an fp32 or bf16 output dtype."""
    if expert_ids.dim() != 2 or expert_ids.shape[0] != m:
        raise ValueError(f"expert_ids must be [M, topk] with M={m}, got {tuple(expert_ids.shape)}")
    ids = expert_ids.to(torch.int64).contiguous()
    if check and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= e):
        raise ValueError(f"expert ids must lie in [0, {e})")
    if out_dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"out_dtype must be bf16 or fp32, got {out_dtype}")
    return ids


def gemv_experts(lib: KernelLib, w: torch.Tensor, expert_ids: torch.Tensor, x: torch.Tensor,
                 out_dtype: torch.dtype = torch.bfloat16, check: bool = True) -> torch.Tensor:
    """MoE gather: out[m, j] = w[expert_ids[m, j]] @ x[m] for w [E, N, K], expert_ids [M, topk],
    x [M, K] -> [M, topk, N], in one call; tokens sharing an expert read it once. check=False skips
    the id range check (two host syncs) for ids that come straight from a top-k over E columns."""
    _check_w(w, 3)
    e, n, k = w.shape
    x2 = _rows(x, k)
    ids = _expert_ids(expert_ids, x2.shape[0], e, out_dtype, check)
    m, topk = ids.shape
    out = torch.zeros(m, topk, n, dtype=out_dtype)
    if ids.numel() and n and k:
        lib.fn.gs_gemv_bf16_experts(w.data_ptr(), e, n, k, ids.data_ptr(), m, topk, x2.data_ptr(), x2.stride(0),
                                  out.data_ptr(), int(out_dtype == torch.float32), torch.get_num_threads())
    return out


def _check_q(q: torch.Tensor, scale: torch.Tensor, ndim: int) -> None:
    if q.dim() != ndim or q.dtype != torch.int8 or not q.is_cpu or not q.is_contiguous():
        raise ValueError(f"q must be a contiguous {ndim}-D int8 CPU tensor, got {q.dtype} {tuple(q.shape)}")
    if scale.dtype not in (torch.bfloat16, torch.float32) or scale.shape != q.shape[:-1] or not scale.is_contiguous():
        raise ValueError(f"scale must be contiguous bf16/fp32 {tuple(q.shape[:-1])}, "
                         f"got {scale.dtype} {tuple(scale.shape)}")


def gemv_int8(lib: KernelLib, q: torch.Tensor, scale: torch.Tensor, x: torch.Tensor,
              out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Weight-only int8: x [..., K] bf16 @ (q [N, K] int8 * scale[N, None])^T -> [..., N] (bf16 or fp32),
    computed as scale[n] * sum_k x q in fp32 with q widened in registers; one rounding. Fast for up to
    8 rows (kernel_lib.MAX_ROWS). scale bf16 or fp32 [N]; lib from KernelPolicy.lib."""
    _check_q(q, scale, 2)
    n, k = q.shape
    if out_dtype is not torch.bfloat16 and out_dtype is not torch.float32:
        raise ValueError(f"out_dtype must be bf16 or fp32, got {out_dtype}")
    x2 = _rows(x, k)
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=out_dtype)  # [M, N]
    if m and n:
        if k == 0:
            out.zero_()
        else:
            lib.fn.gs_gemv_int8(q.data_ptr(), scale.data_ptr(), scale.dtype is torch.float32, n, k, x2.data_ptr(), m,
                              x2.stride(0), out.data_ptr(), out_dtype is torch.float32, torch.get_num_threads())
    return out.view(*x.shape[:-1], n)


def gemv_int8_experts(lib: KernelLib, q: torch.Tensor, scale: torch.Tensor, expert_ids: torch.Tensor, x: torch.Tensor,
                      out_dtype: torch.dtype = torch.bfloat16, check: bool = True) -> torch.Tensor:
    """gemv_experts for int8 experts: q [E, N, K] int8, scale [E, N] bf16/fp32, expert_ids [M, topk],
    x [M, K] bf16 -> [M, topk, N] with out[m, j] = x[m] @ (q[e] * scale[e, :, None])^T, e = expert_ids[m, j]."""
    _check_q(q, scale, 3)
    e, n, k = q.shape
    x2 = _rows(x, k)
    ids = _expert_ids(expert_ids, x2.shape[0], e, out_dtype, check)
    m, topk = ids.shape
    out = torch.zeros(m, topk, n, dtype=out_dtype)  # [M, topk, N]
    if ids.numel() and n and k:
        lib.fn.gs_gemv_int8_experts(q.data_ptr(), scale.data_ptr(), scale.dtype is torch.float32, e, n, k, ids.data_ptr(),
                                  m, topk, x2.data_ptr(), x2.stride(0), out.data_ptr(), out_dtype is torch.float32,
                                  torch.get_num_threads())
    return out


def int8_to_bf16(lib: KernelLib, q: torch.Tensor) -> torch.Tensor:
    """q.to(torch.bfloat16) for a contiguous int8 CPU tensor (exact), vectorised and threaded."""
    if q.dtype != torch.int8 or not q.is_cpu or not q.is_contiguous():
        raise ValueError(f"q must be a contiguous int8 CPU tensor, got {q.dtype} {tuple(q.shape)}")
    out = torch.empty(q.shape, dtype=torch.bfloat16)
    if q.numel():
        lib.fn.gs_int8_to_bf16(q.data_ptr(), q.numel(), out.data_ptr(), torch.get_num_threads())
    return out


def rms_norm(lib: KernelLib, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """F.rms_norm for bf16 CPU x [..., D] (unit stride on D) and a bf16 [D] weight or None, in one call:
    fp32 statistics, x * rsqrt(mean(x^2) + eps) * w rounded once (torch's summation order differs, so
    a result can differ from F.rms_norm by one bf16 ulp)."""
    d = x.shape[-1]
    x2 = x if x.dim() == 2 else x.reshape(-1, d)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < d):
        x2 = x2.contiguous()
    out = torch.empty(x.shape, dtype=torch.bfloat16)  # [..., D]
    lib.fn.gs_rms_norm_bf16(x2.data_ptr(), x2.shape[0], x2.stride(0), d,
                          None if weight is None else weight.data_ptr(), eps, out.data_ptr())
    return out


def decode_attention(lib: KernelLib, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                     n_keys: torch.Tensor, scale: float) -> torch.Tensor:
    """One query row per sequence over the paged cache: q [S, Hq, D] bf16, caches [..., Hkv, D] bf16
    contiguous, slots [S, L] int64 flat cache slots (the first n_keys[s] of row s are its keys, in any
    order), n_keys [S] int64 (each >= 1) -> [S, Hq, D] bf16. Softmax over the keys in fp32."""
    hkv, d = k_cache.shape[-2:]
    s, hq = q.shape[0], q.shape[1]
    if q.stride(2) != 1 or q.stride(1) != d:
        q = q.contiguous()
    out = torch.empty(s, hq, d, dtype=torch.bfloat16)  # [S, Hq, D]
    lib.fn.gs_decode_attn_bf16(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), hkv, d,
                             slots.data_ptr(), slots.stride(0), n_keys.data_ptr(), s, hq, scale, out.data_ptr(),
                             torch.get_num_threads())
    return out


def qkv_post(lib: KernelLib, qkv: torch.Tensor, hq: int, hkv: int, d: int, has_v: bool, q_weight: torch.Tensor,
             k_weight: torch.Tensor, eps: float, cos: torch.Tensor, sin_signed: torch.Tensor,
             slot_mapping: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """Everything between the fused q/k/v projection and attention, in one call: qkv [T, W] bf16 (unit
    stride on W) -> q [T, Hq, D] normed and rope'd; k (normed, rope'd) and v (weightless norm, or
    k's fp32 norm when not has_v) written into the contiguous bf16 caches at slot_mapping [T] int64.
    cos/sin_signed: contiguous bf16 [T, 1, D] tables (ops.rope.rope_cos_sin / signed_sin)."""
    t = qkv.shape[0]
    if qkv.stride(1) != 1:
        qkv = qkv.contiguous()
    q = torch.empty(t, hq, d, dtype=torch.bfloat16)  # [T, Hq, D]
    lib.fn.gs_qkv_post_bf16(qkv.data_ptr(), t, qkv.stride(0), hq, hkv, d, int(has_v), q_weight.data_ptr(),
                          k_weight.data_ptr(), eps, cos.data_ptr(), sin_signed.data_ptr(), slot_mapping.data_ptr(),
                          k_cache.data_ptr(), v_cache.data_ptr(), q.data_ptr())
    return q


def geglu(lib: KernelLib, gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2W] bf16 (gate first) -> gelu_tanh(gate) * up [T, W] bf16, rounded like torch's bf16 ops."""
    t, w2 = gate_up.shape
    if gate_up.stride(1) != 1:
        gate_up = gate_up.contiguous()
    out = torch.empty(t, w2 // 2, dtype=torch.bfloat16)  # [T, W]
    lib.fn.gs_geglu_bf16(gate_up.data_ptr(), t, gate_up.stride(0), w2 // 2, out.data_ptr())
    return out


def geglu_cols(lib: KernelLib, gu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """gu [E, 2I, n] bf16 contiguous (each expert's gate rows, then its up rows, one column per token slot),
    w [E, n] bf16 routing weights -> [E, I, n] = bf16(bf16(gelu_tanh(gate)) * up) * w per column."""
    e, two_i, n = gu.shape
    out = torch.empty(e, two_i // 2, n, dtype=torch.bfloat16)  # [E, I, n]
    lib.fn.gs_geglu_cols_bf16(gu.data_ptr(), e, two_i // 2, n, w.data_ptr(), out.data_ptr())
    return out
