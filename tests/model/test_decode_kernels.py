"""The decode fast paths (GEMV kernel in linear() and the MoE expert gather) against torch, and the
bf16 model with them on vs off (the fallback CI machines without gcc/AMX take)."""

from __future__ import annotations

import pytest
import torch
from parity_batch import PagedSim

import gemmaserve.ops.linear as linear_op
import gemmaserve.ops.moe as moe_op
from gemmaserve.demo import demo_config
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.decoder import Gemma4ForCausalLM
from gemmaserve.ops import cpu_gemv
from gemmaserve.ops.linear import linear

needs_kernel = pytest.mark.skipif(not cpu_gemv.available(), reason="CPU GEMV kernel unavailable")


def _bf16_ulps(out: torch.Tensor, ref: torch.Tensor, k: int) -> float:
    """Max error in units of the output's largest magnitude times 2^-8 (one bf16 rounding)."""
    return float((out.float() - ref).abs().max() / (ref.abs().amax().clamp_min(1.0) * 2**-8 * (1 + k**0.5 / 64)))


@needs_kernel
@pytest.mark.parametrize("m", [1, 3, 8])
def test_linear_uses_kernel_and_matches_fp32(m, monkeypatch):
    g = torch.Generator().manual_seed(m)
    w = torch.randn(300, 96, generator=g).bfloat16()
    x = torch.randn(m, 96, generator=g).bfloat16()
    calls = []
    real = cpu_gemv.gemv
    monkeypatch.setattr(cpu_gemv, "gemv", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = linear(x, w)
    assert calls == [1] and out.shape == (m, 300) and out.dtype == torch.bfloat16
    ref = x.float() @ w.float().T
    assert _bf16_ulps(out, ref, 96) <= 1.0
    # And equal to the kernel's own fp32 result rounded once.
    assert torch.equal(out, real(w, x, out_dtype=torch.float32).bfloat16())


def test_linear_falls_back_without_kernel(monkeypatch):
    monkeypatch.setenv("GEMMASERVE_CPU_KERNELS", "0")
    w = torch.randn(50, 32).bfloat16()
    x = torch.randn(2, 32).bfloat16()
    assert not cpu_gemv.available()
    monkeypatch.setattr(cpu_gemv, "gemv", lambda *a, **k: pytest.fail("kernel called while disabled"))
    assert torch.equal(linear(x, w), (w @ x.t()).t())
    assert torch.equal(linear(x[:1], w), torch.mv(w, x[0])[None])
    # fp32 and non-contiguous weights never reach the kernel either.
    monkeypatch.delenv("GEMMASERVE_CPU_KERNELS")
    assert torch.equal(linear(x.float(), w.float()), (w.float() @ x.float().t()).t())
    wt = torch.randn(32, 50).bfloat16().t()
    assert torch.equal(linear(x, wt), (wt @ x.t()).t())


def _moe_ref(x, gate_up, down, idx, w):
    """fp32 reference of one routed MoE block: x [T, H], gate_up [E, 2I, H], down [E, H, I]."""
    out = torch.zeros(x.shape[0], down.shape[1])
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            gate, up = (gate_up[e].float() @ x[t].float()).chunk(2)
            act = torch.nn.functional.gelu(gate, approximate="tanh") * up
            out[t] += float(w[t, j]) * (down[e].float() @ act)
    return out


@needs_kernel
@pytest.mark.parametrize("t", [1, 2, 5, 8])
def test_moe_gather_gemv_matches_reference_and_torch_path(t):
    g = torch.Generator().manual_seed(100 + t)
    e, h, i, k = 6, 64, 24, 3
    x = torch.randn(t, h, generator=g).bfloat16()
    gate_up = (0.2 * torch.randn(e, 2 * i, h, generator=g)).bfloat16()
    down = (0.2 * torch.randn(e, h, i, generator=g)).bfloat16()
    probs = torch.rand(t, e, generator=g)
    w, idx = torch.topk(probs, k, dim=-1)  # tokens share experts: 6 experts, 3 per token
    ref = _moe_ref(x, gate_up, down, idx, w)
    fast = moe_op.moe_gather_gemv(x, gate_up, down, idx, w)
    torch_path = moe_op.moe_gather(x, gate_up, down, idx, w)
    assert fast.shape == (t, h) and fast.dtype == torch.bfloat16
    # The kernel path rounds the activations once more than fp32 (bf16 act, as the torch path does).
    scale = float(ref.abs().max())
    assert float((fast.float() - ref).abs().max()) <= 0.02 * scale
    assert float((fast.float() - torch_path.float()).abs().max()) <= 0.02 * scale
    # moe_experts dispatches here for few bf16 tokens.
    assert torch.equal(moe_op.moe_experts(x, gate_up, down, idx, w), fast)


def _tiny_bf16() -> Gemma4ForCausalLM:
    cfg = Gemma4TextConfig.from_dict(demo_config("tiny"))
    return Gemma4ForCausalLM(cfg, torch.bfloat16).init_random_(3).fuse_()


def _decode(model: Gemma4ForCausalLM, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """Greedy decode of n tokens (one sequence, then the same as a 3-sequence batch's first row)."""
    sim = PagedSim(model, block_size=4, num_blocks=64, dtype=torch.bfloat16)
    logits = model(sim.batch([(0, prompt)]), sim.caches)
    toks, rows = [], []
    for _ in range(n):
        tok = int(logits[0].argmax())
        toks.append(tok)
        logits = model(sim.batch([(0, [tok])]), sim.caches)
        rows.append(logits[0])
    return toks, torch.stack(rows)


@needs_kernel
def test_bf16_decode_with_kernels_tracks_torch_fallback(monkeypatch):
    model = _tiny_bf16()
    prompt = [2] + [(17 * j + 5) % model.config.vocab_size for j in range(1, 13)]
    calls = {"gemv": 0, "gemv_experts": 0}
    for name in calls:
        real = getattr(cpu_gemv, name)
        monkeypatch.setattr(cpu_gemv, name, lambda *a, _r=real, _n=name, **k: calls.__setitem__(_n, calls[_n] + 1) or _r(*a, **k))
    fast_toks, fast = _decode(model, prompt, 6)
    # Per decode step and layer: qkv, o, router, gate_up, down and two expert calls, plus the LM head;
    # the prefill's last layer runs its feed-forward (4 GEMVs with the LM head) on the one sampled row.
    n_layers = model.config.num_hidden_layers
    assert calls == {"gemv": 6 * (5 * n_layers + 1) + 4, "gemv_experts": 6 * 2 * n_layers + 2}
    monkeypatch.setattr(linear_op, "GEMV_MAX_ROWS", 0)
    monkeypatch.setattr(moe_op, "GEMV_MAX_TOKENS", 0)
    slow_toks, slow = _decode(model, prompt, 6)
    assert fast_toks == slow_toks
    # Both are bf16 models rounding at different points (summation order, one fewer MoE rounding).
    assert float((fast - slow).abs().max()) < 0.05 * float(slow.abs().max())
    assert float(torch.nn.functional.cosine_similarity(fast, slow, dim=-1).min()) > 0.999
