"""The decode fast paths wired into the model: GEMV in linear(), the MoE expert gather, q/k/v
post-processing, the one-call decoder layer; and the bf16 model with them on vs off (the torch
fallback that machines without gcc/AVX512 take)."""

from __future__ import annotations

import pytest
import torch
from layer_inputs import count_fast_layers, layer_plan, layer_rope
from parity_batch import PagedSim

import gemmaserve.model.attention as model_attn
import gemmaserve.model.fast_decode as fast_decode
import gemmaserve.ops.moe as moe_op
from gemmaserve.demo import demo_config
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.decoder import Gemma4ForCausalLM
from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.linear import linear

POLICY = KernelPolicy.default()  # this machine's policy (tests/ops runs every kernel on every lower tier)
needs_kernel = pytest.mark.skipif(POLICY.lib is None, reason="CPU kernels unavailable")


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
    real = cpu_kernels.gemv
    monkeypatch.setattr(cpu_kernels, "gemv", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = linear(x, w, POLICY)
    assert calls == [1] and out.shape == (m, 300) and out.dtype == torch.bfloat16
    ref = x.float() @ w.float().T
    assert _bf16_ulps(out, ref, 96) <= 1.0
    # And equal to the kernel's own fp32 result rounded once.
    assert torch.equal(out, real(POLICY.lib, w, x, out_dtype=torch.float32).bfloat16())


@pytest.mark.parametrize("off", [POLICY.torch_only(), POLICY.without("gemv")], ids=["torch_only", "no_gemv"])
def test_linear_falls_back_without_kernel(monkeypatch, off):
    w = torch.randn(50, 32).bfloat16()
    x = torch.randn(2, 32).bfloat16()
    monkeypatch.setattr(cpu_kernels, "gemv", lambda *a, **k: pytest.fail("kernel called while disabled"))
    assert torch.equal(linear(x, w, off), (w @ x.t()).t())
    assert torch.equal(linear(x[:1], w, off), torch.mv(w, x[0])[None])
    # fp32 and non-contiguous weights never reach the kernel either.
    assert torch.equal(linear(x.float(), w.float(), POLICY), (w.float() @ x.float().t()).t())
    wt = torch.randn(32, 50).bfloat16().t()
    assert torch.equal(linear(x, wt, POLICY), (wt @ x.t()).t())


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
    fast = moe_op.moe_gather_gemv(x, gate_up, down, idx, w, POLICY)
    torch_path = moe_op.moe_gather(x, gate_up, down, idx, w, POLICY.torch_only())
    assert fast.shape == (t, h) and fast.dtype == torch.bfloat16
    # The kernel path rounds the activations once more than fp32 (bf16 act, as the torch path does).
    scale = float(ref.abs().max())
    assert float((fast.float() - ref).abs().max()) <= 0.02 * scale
    assert float((fast.float() - torch_path.float()).abs().max()) <= 0.02 * scale
    # moe_experts dispatches here for few bf16 tokens.
    assert torch.equal(moe_op.moe_experts(x, gate_up, down, idx, w, POLICY), fast)
    # The expert gather needs bf16 `down` too: an fp32 down falls back to torch instead of being misread.
    assert not POLICY.takes("moe_gemv", gate_up, down.float(), strided=(x,))


def _tiny_pair() -> tuple[Gemma4ForCausalLM, Gemma4ForCausalLM]:
    """The tiny demo model in bf16 and the same weights in fp32 (the accuracy yardstick), both fused;
    the bf16 one on this machine's kernel policy."""
    cfg = Gemma4TextConfig.from_dict(demo_config("tiny"))
    m16 = Gemma4ForCausalLM(cfg, torch.bfloat16).init_random_(3).fuse_().use_kernel_policy(POLICY)
    m32 = Gemma4ForCausalLM(cfg, torch.float32).fuse_()
    m32.load_state_dict({k: v.float() for k, v in m16.state_dict().items()})
    return m16, m32


def _decode(model: Gemma4ForCausalLM, prompt: list[int], forced: list[int]) -> torch.Tensor:
    """Prefill, then one decode step per forced token (the same inputs for every variant: a random
    model's near-flat logits would let greedy choices diverge on one bf16 ulp). -> [len(forced), V]."""
    sim = PagedSim(model, block_size=4, num_blocks=64, dtype=model.dtype)
    model(sim.batch([(0, prompt)]), sim.caches)
    return torch.cat([model(sim.batch([(0, [tok])]), sim.caches) for tok in forced])


def _count_calls(monkeypatch, names: list[str]) -> dict[str, int]:
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, _r=real, _n=name, **k: calls.__setitem__(_n, calls[_n] + 1) or _r(*a, **k))
    return calls


@needs_kernel
def test_bf16_decode_with_kernels_is_as_accurate_as_torch_fallback(monkeypatch):
    m16, m32 = _tiny_pair()
    vocab = m16.config.vocab_size
    prompt = [2] + [(17 * j + 5) % vocab for j in range(1, 13)]
    forced = [(31 * j + 7) % vocab for j in range(10)]  # past the 16-token sliding window
    ref = _decode(m32, prompt, forced)  # fp32 never takes a kernel path
    n, layers = len(forced), m16.config.num_hidden_layers
    # Default: every decode step's layers in one call each; the prefill (a MIXED step) runs the torch
    # layers without asking.
    seen = count_fast_layers(monkeypatch)
    one_call = _decode(m16, prompt, forced)
    assert seen == [n * layers, 0]
    m16.use_kernel_policy(POLICY.without("decode_layer"))
    calls = _count_calls(monkeypatch, ["gemv", "gemv_experts", "rms_norm", "decode_attention", "qkv_post"])
    per_op = _decode(m16, prompt, forced)
    # Per decode step and layer: qkv, o, router, gate_up, down and two expert calls, plus the LM head;
    # the prefill's last layer runs its feed-forward (4 GEMVs with the LM head) on the one sampled row,
    # and every prefill layer's MoE (13 rows, within moe_gemv_max_tokens) takes the expert gather.
    # The 13-row prefill projections take the GEMV too where one pass serves 13 rows (AMX: 5 per layer
    # but the last layer's qkv and o only, then the 4 one-row calls), else W @ x^T.
    # Norms: 7 per layer + the final one (q/k/v norms are inside qkv_post, prefill included).
    assert len(prompt) <= POLICY.moe_gemv_max_tokens
    prefill_gemv = 5 * (layers - 1) + 2 + 4 if len(prompt) <= POLICY.gemv_rows else 4
    assert calls["gemv"] == n * (5 * layers + 1) + prefill_gemv and calls["gemv_experts"] == n * 2 * layers + 2 * layers
    assert calls["decode_attention"] == n * layers and calls["qkv_post"] == (n + 1) * layers
    assert calls["rms_norm"] >= n * (7 * layers + 1)
    m16.use_kernel_policy(POLICY.torch_only())
    slow = _decode(m16, prompt, forced)
    # A random bf16 model drifts far from fp32 either way (this one by ~0.1 of logits up to 0.6); the
    # kernels (fp32 softmax and MoE sums, fewer roundings) must not drift further than torch's path.
    slow_err = float((slow - ref).abs().mean())
    for fast in (one_call, per_op):
        fast_err = float((fast - ref).abs().mean())
        assert fast_err <= 1.1 * slow_err, (fast_err, slow_err)
        assert not torch.equal(fast, slow)  # the knobs did switch paths


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 24, 32])  # 13: two 8-row groups without AMX; 24, 32: two B tiles
def test_one_call_layer_matches_torch_layer(rows, monkeypatch):
    """The fused kernel layer == the torch layer (per-op kernels on) on the same inputs, up to rare
    one-ulp differences (gelu's tanh, softmax's exp); K/V written to the same cache slots."""
    m16, _ = _tiny_pair()
    with torch.no_grad():
        for layer in m16.layers:
            layer.router.proj.weight.mul_(60.0)  # decisive routing: no near-tied experts to flip
    sim = PagedSim(m16, block_size=4, num_blocks=128, dtype=torch.bfloat16)
    for s in range(rows):
        m16(sim.batch([(s, [3 + s, 9, 27 + s, 4, 5][: 2 + s % 4])]), sim.caches)
    batch = sim.batch([(s, [11 + s]) for s in range(rows)])
    g = torch.Generator().manual_seed(rows)
    for i in (0, 5):  # a sliding layer and the full (K=V) layer
        layer, kind = m16.layers[i], m16.config.layer_types[i]
        h = torch.randn(rows, m16.config.hidden_size, generator=g).bfloat16()
        plan, cos_sin = layer_plan(m16, batch, kind), layer_rope(m16, batch, kind)
        slots = batch.kinds[kind].slot_mapping
        kv_fast = (sim.caches[i][0].clone(), sim.caches[i][1].clone())
        fast = fast_decode.decode_layer(layer, h, cos_sin, plan, slots, kv_fast, None, POLICY)
        if rows > POLICY.decode_layer_max_rows_without_amx and POLICY.gemv_rows < rows:
            assert fast is None  # without AMX the torch layer takes batches past 16 rows
            continue
        assert fast is not None  # the one-call path applies to this batch
        # The torch layer with its per-op kernels (a MIXED-mode call never takes the one-call layer).
        kv_slow = (sim.caches[i][0].clone(), sim.caches[i][1].clone())
        slow = layer(h, cos_sin, plan, slots, kv_slow, None)
        (kf, vf), (ks, vs) = kv_fast, kv_slow
        assert fast.shape == slow.shape == (rows, m16.config.hidden_size)
        assert float((fast != slow).float().mean()) < 0.05  # bit-equal on this model and seed
        assert float((fast.float() - slow.float()).abs().max()) <= 0.05 * float(slow.float().abs().max())
        assert torch.equal(kf.nan_to_num(7.0), ks.nan_to_num(7.0)) or float((kf != ks).float().mean()) < 1e-3
        assert torch.equal(vf.nan_to_num(7.0), vs.nan_to_num(7.0)) or float((vf != vs).float().mean()) < 1e-3


@needs_kernel
@pytest.mark.parametrize("layer", [0, 5])  # the tiny model's layer 5 is full: K=V when k_eq_v
@pytest.mark.parametrize("k_eq_v", [True, False])
def test_qkv_post_kernel_rounds_like_torch(layer, k_eq_v, monkeypatch):
    """Norms + RoPE + cache write in one call == the torch ops (same rounding points), q and caches."""
    cfg = Gemma4TextConfig.from_dict({**demo_config("tiny")["text_config"], "attention_k_eq_v": k_eq_v})
    model = Gemma4ForCausalLM(cfg, torch.bfloat16).init_random_(7).fuse_().use_kernel_policy(POLICY)
    attn = model.layers[layer].self_attn
    assert attn.has_v == (not k_eq_v or cfg.layer_types[layer] != "full_attention")
    sim = PagedSim(model, block_size=4, num_blocks=16, dtype=torch.bfloat16)
    batch = sim.batch([(0, list(range(3, 12)))])  # 9 rows of prefill: every position's rope differs
    kind = cfg.layer_types[layer]
    cos, sin = layer_rope(model, batch, kind)
    g = torch.Generator().manual_seed(layer)
    x = (torch.randn(9, cfg.hidden_size, generator=g)).bfloat16()
    slots = batch.kinds[kind].slot_mapping
    captured = {}
    real_pa = model_attn.paged_attention
    monkeypatch.setattr(model_attn, "paged_attention", lambda q, *a, **k: captured.setdefault("q", []).append(q) or real_pa(q, *a, **k))
    outs = []
    for policy in (POLICY, POLICY.without("qkv_post")):
        model.use_kernel_policy(policy)
        caches = [(c[0].clone().zero_(), c[1].clone().zero_()) for c in sim.caches]
        plan = layer_plan(model, batch, kind)
        attn(x, (cos, sin), plan, slots, caches[layer])
        outs.append((captured["q"][-1], caches[layer][0], caches[layer][1]))
    (q1, k1, v1), (q0, k0, v0) = outs
    for a, b in ((q1, q0), (k1, k0), (v1, v0)):
        assert a.shape == b.shape
        # Identical but for rsqrt's last fp32 bit (a 1-ulp bf16 difference on a rare element).
        assert float((a != b).float().mean()) < 0.01
        assert bool(((a.float() - b.float()).abs() <= 2**-7 * b.float().abs()).all())
    assert bool(k1.abs().sum() > 0) and bool(v1.abs().sum() > 0)  # the kernel did write the caches


@needs_kernel
def test_fp32_layers_take_the_torch_path():
    # (int8 layers take the one-call path: tests/model/test_int8_decode_layer.py)
    m16, m32 = _tiny_pair()
    sim = PagedSim(m32, block_size=4, num_blocks=16, dtype=m32.dtype)
    m32(sim.batch([(0, [5, 6, 7])]), sim.caches)
    batch = sim.batch([(0, [8])])
    assert fast_decode._tensors(m32.layers[0]) is None
    kind = m32.config.layer_types[0]
    out = fast_decode.decode_layer(m32.layers[0], torch.randn(1, m32.config.hidden_size), (None, None),
                                   layer_plan(m32, batch, kind), batch.kinds[kind].slot_mapping, sim.caches[0], None,
                                   POLICY)
    assert out is None
    logits = m32(batch, sim.caches)
    assert logits.shape == (1, m32.config.vocab_size) and bool(torch.isfinite(logits).all())
    tensors, scales = fast_decode._tensors(m16.layers[0])
    assert len(tensors) == len(fast_decode._WEIGHTS) and scales is None


@needs_kernel
@pytest.mark.parametrize("rows", [1, 5, 32])
def test_one_call_layer_merged_mlp_and_experts_stages_change_no_bit(rows):
    """The dense MLP and expert projections share one parallel region per stage (AMX): the layer's
    output and K/V are bit-equal to running them as separate calls."""
    m16, _ = _tiny_pair()
    sim = PagedSim(m16, block_size=4, num_blocks=128, dtype=torch.bfloat16)
    for s in range(rows):
        m16(sim.batch([(s, [3 + s, 9, 27 + s][: 1 + s % 3])]), sim.caches)
    batch = sim.batch([(s, [11 + s]) for s in range(rows)])
    g = torch.Generator().manual_seed(rows)
    lib = POLICY.lib.fn
    for i in (0, 5):
        layer, kind = m16.layers[i], m16.config.layer_types[i]
        h = torch.randn(rows, m16.config.hidden_size, generator=g).bfloat16()
        plan, cos_sin = layer_plan(m16, batch, kind), layer_rope(m16, batch, kind)
        outs = []
        try:
            for merged in (1, 0):
                lib.gs_gemv_set_dense_merged(merged)
                kv = (sim.caches[i][0].clone(), sim.caches[i][1].clone())
                out = fast_decode.decode_layer(layer, h, cos_sin, plan, batch.kinds[kind].slot_mapping, kv, None,
                                               POLICY)
                assert out is not None or rows > POLICY.gemv_rows
                outs.append((out, kv))
        finally:
            lib.gs_gemv_set_dense_merged(1)
        (a, (ka, va)), (b, (kb, vb)) = outs
        if a is not None:
            assert torch.equal(a, b) and torch.equal(ka.nan_to_num(7.0), kb.nan_to_num(7.0))
            assert torch.equal(va.nan_to_num(7.0), vb.nan_to_num(7.0))
