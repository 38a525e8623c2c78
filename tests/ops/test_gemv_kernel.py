"""Exactness of the CPU bf16 GEMV kernel against an fp32 matmul of the same bf16 inputs, on every ISA tier
this machine runs (the `lib` fixture, tests/ops/conftest.py)."""

import pytest
import torch

from gemmaserve.ops import cpu_kernels


def _ref(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.float() @ w.float().T


def _close(out: torch.Tensor, ref: torch.Tensor, k: int) -> None:
    # fp32 accumulation in another order: error grows ~ sqrt(K) ulp of the row's magnitude; the bf16
    # output rounding adds one bf16 ulp (2^-8 relative).
    scale = ref.abs().amax().clamp_min(1.0)
    tol = (2 ** -8 if out.dtype == torch.bfloat16 else 1e-5) * scale + 1e-6 * k**0.5 * scale
    assert (out.float() - ref).abs().max() <= tol


@pytest.mark.parametrize("n,k", [(1, 512), (3, 704), (7, 1024), (64, 2816), (129, 33), (1000, 704),
                                 (4099, 1024), (5000, 512), (17, 31), (5, 1), (3001, 1000)])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
def test_gemv_matches_fp32_reference(n, k, m, lib):
    g = torch.Generator().manual_seed(n * 131 + k * 7 + m)
    w = torch.randn(n, k, generator=g).bfloat16()
    x = torch.randn(m, k, generator=g).bfloat16()
    ref = _ref(w, x)
    out32 = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
    assert out32.shape == (m, n) and out32.dtype == torch.float32
    _close(out32, ref, k)
    out16 = cpu_kernels.gemv(lib, w, x)
    assert out16.dtype == torch.bfloat16
    # The bf16 result is exactly the fp32 kernel result rounded to nearest even.
    assert torch.equal(out16, out32.bfloat16())


@pytest.mark.parametrize("m", [4, 6, 7])
def test_every_row_count_up_to_eight_is_exact_per_row(m, lib):
    # Each row of a multi-row call equals the single-row call: rows do not mix.
    w = torch.randn(300, 704).bfloat16()
    x = torch.randn(m, 704).bfloat16()
    multi = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
    for i in range(m):
        single = cpu_kernels.gemv(lib, w, x[i], out_dtype=torch.float32)
        assert single.shape == (300,)
        torch.testing.assert_close(multi[i], single, rtol=0, atol=1e-4)


def test_more_than_eight_rows_and_leading_dims(lib):
    w = torch.randn(257, 1024).bfloat16()
    x = torch.randn(2, 11, 1024).bfloat16()
    out = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
    assert out.shape == (2, 11, 257)
    _close(out, _ref(w, x.reshape(-1, 1024)).reshape(2, 11, 257), 1024)


@pytest.mark.parametrize("m", [9, 16, 17, 24, 31, 32, 33, 70])
def test_many_rows_are_exact_per_row_and_match_fp32(m, lib):
    # Up to rows_per_pass() rows share one weight pass (AMX: two 16-column B tiles; 17..32 rows use
    # both), more go in further passes. Each row's sum runs in the same k order whatever the row count,
    # so a row of a many-row call equals the one-row call exactly; N = 16*k + 5 and 16*k + 16 leave the
    # vector-path tail and the lone last 16-row block, K = 704 and 1024 both tile.
    for n, k in [(261, 704), (304, 1024)]:
        g = torch.Generator().manual_seed(m * 1000 + n)
        w = torch.randn(n, k, generator=g).bfloat16()
        x = torch.randn(m, k, generator=g).bfloat16()
        multi = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
        _close(multi, _ref(w, x), k)
        for i in range(m):
            assert torch.equal(multi[i], cpu_kernels.gemv(lib, w, x[i], out_dtype=torch.float32)), (n, k, i)
        assert torch.equal(cpu_kernels.gemv(lib, w, x), multi.bfloat16())


def test_non_contiguous_x_is_handled(lib):
    w = torch.randn(96, 512).bfloat16()
    base = torch.randn(512, 6).bfloat16()
    x = base.t()  # [6, 512] with stride (1, 6)
    assert not x.is_contiguous()
    _close(cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32), _ref(w, x), 512)
    rows = torch.randn(4, 1024).bfloat16()[:, :512]  # row stride 1024 > K: used without a copy
    _close(cpu_kernels.gemv(lib, w, rows, out_dtype=torch.float32), _ref(w, rows), 512)


def test_bad_inputs_are_rejected(lib):
    w = torch.randn(8, 64).bfloat16()
    with pytest.raises(ValueError):
        cpu_kernels.gemv(lib, w.t().contiguous().t(), torch.randn(1, 8).bfloat16())  # non-contiguous weight
    with pytest.raises(ValueError):
        cpu_kernels.gemv(lib, w.float(), torch.randn(1, 64))
    with pytest.raises(ValueError):
        cpu_kernels.gemv(lib, w, torch.randn(1, 63).bfloat16())
    with pytest.raises(ValueError):
        cpu_kernels.gemv(lib, w, torch.randn(1, 64).bfloat16(), out_dtype=torch.float16)


def test_special_values_propagate(lib):
    w = torch.ones(4, 40).bfloat16()
    x = torch.zeros(2, 40).bfloat16()
    x[0, 39] = float("inf")  # in the K tail (40 = 32 + 8)
    x[1, 0] = float("nan")
    out = cpu_kernels.gemv(lib, w, x)
    assert torch.isinf(out[0]).all() and (out[0] > 0).all()
    assert torch.isnan(out[1]).all()


def test_thread_count_does_not_change_the_result(lib):
    w = torch.randn(3000, 1024).bfloat16()
    x = torch.randn(2, 1024).bfloat16()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
        torch.set_num_threads(2)
        two = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.parametrize("m,topk", [(1, 8), (3, 2), (5, 4)])
def test_experts_gather_matches_per_expert_matmul(m, topk, lib):
    g = torch.Generator().manual_seed(m * 10 + topk)
    e, n, k = 12, 200, 704
    w = torch.randn(e, n, k, generator=g).bfloat16()
    x = torch.randn(m, k, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=g)[:topk] for _ in range(m)])
    ids[-1, 0] = ids[0, 0]  # a shared expert across tokens
    out = cpu_kernels.gemv_experts(lib, w, ids, x, out_dtype=torch.float32)
    assert out.shape == (m, topk, n)
    for i in range(m):
        for j in range(topk):
            _close(out[i, j], _ref(w[int(ids[i, j])], x[i]), k)
    out16 = cpu_kernels.gemv_experts(lib, w, ids, x)
    assert torch.equal(out16, out.bfloat16())


def test_experts_many_tokens_share_one_expert(lib):
    # Ten tokens on the same expert exceed the 8-row group: two groups, same answers.
    w = torch.randn(3, 64, 96).bfloat16()
    x = torch.randn(10, 96).bfloat16()
    ids = torch.tensor([[1, 2]] * 10)
    out = cpu_kernels.gemv_experts(lib, w, ids, x, out_dtype=torch.float32)
    _close(out[:, 0], _ref(w[1], x), 96)
    _close(out[:, 1], _ref(w[2], x), 96)


@pytest.mark.parametrize("m", [10, 20, 40, 70])
def test_experts_groups_past_one_pass_equal_one_token_calls(m, lib):
    # m tokens on expert 1 fill groups of up to rows_per_pass() pairs (AMX: 32, so 40 and 70 tokens
    # take two and three groups; 20 uses both B tiles); every (token, slot) equals its one-token call.
    g = torch.Generator().manual_seed(m)
    w = torch.randn(4, 48, 128, generator=g).bfloat16()
    x = torch.randn(m, 128, generator=g).bfloat16()
    ids = torch.tensor([[1, 3 if i % 3 else 0] for i in range(m)])
    out = cpu_kernels.gemv_experts(lib, w, ids, x, out_dtype=torch.float32)
    _close(out[:, 0], _ref(w[1], x), 128)
    for i in range(m):
        assert torch.equal(out[i], cpu_kernels.gemv_experts(lib, w, ids[i : i + 1], x[i : i + 1], out_dtype=torch.float32)[0])
    assert torch.equal(cpu_kernels.gemv_experts(lib, w, ids, x), out.bfloat16())


def test_experts_rejects_out_of_range_ids(lib):
    w = torch.randn(4, 8, 32).bfloat16()
    with pytest.raises(ValueError):
        cpu_kernels.gemv_experts(lib, w, torch.tensor([[4]]), torch.randn(1, 32).bfloat16())


def test_tile_path_shapes_and_special_values(lib):
    # K a multiple of 32 with 2..8 rows takes the AMX path where the CPU has it; N = 16*k + 5 leaves
    # rows for the vector path, and an inf must come out as inf (not NaN from padding).
    w = torch.randn(53, 64).bfloat16()
    x = torch.randn(3, 64).bfloat16()
    ref = _ref(w, x)
    _close(cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32), ref, 64)
    w[50, 7] = float("inf")
    x[:, 7] = 1.0
    out = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
    assert torch.isinf(out[:, 50]).all() and not torch.isnan(out).any()
