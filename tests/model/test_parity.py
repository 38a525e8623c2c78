"""Decoder parity with transformers 5.23 Gemma 4 (fp32): prefill, paged decode across the sliding
window with released blocks, chunked prefill, mixed batches, MoE with and without real routing."""

from __future__ import annotations

import pytest
import torch
from parity_batch import PagedSim
from transformers import Gemma4TextConfig as HFConfig
from transformers.models.gemma4.modeling_gemma4 import Gemma4ForCausalLM as HFGemma4ForCausalLM

from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.decoder import Gemma4ForCausalLM

S, F = "sliding_attention", "full_attention"
ATOL = 1e-4
WINDOW = 8


def _hf_config(moe: bool, top_k: int = 4, num_experts: int = 4, k_eq_v: bool = True) -> HFConfig:
    cfg = HFConfig(
        vocab_size=160,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        num_global_key_value_heads=1 if k_eq_v else None,
        attention_k_eq_v=k_eq_v,
        sliding_window=WINDOW,
        layer_types=[S, S, F, S, S, F],
        enable_moe_block=moe,
        num_experts=num_experts if moe else None,
        top_k_experts=top_k if moe else None,
        moe_intermediate_size=24 if moe else None,
        hidden_size_per_layer_input=0,
        final_logit_softcapping=30.0,
    )
    cfg._attn_implementation = "eager"
    return cfg


def _perturb(ref: torch.nn.Module, seed: int, router_gain: float) -> None:
    """transformers initialises norms/scales to exactly 1; randomise them so that a swapped or
    dropped weight shows up in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
            if name.endswith("router.proj.weight"):
                p.mul_(router_gain)  # decisive routing: no near-tied experts
        for name, b in ref.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.75 + 0.5 * torch.rand(b.shape, generator=gen))


def _build(
    moe: bool, top_k: int = 4, num_experts: int = 4, router_gain: float = 1.0, k_eq_v: bool = True, fused: bool = False
):
    hf_cfg = _hf_config(moe, top_k, num_experts, k_eq_v)
    torch.manual_seed(0)
    ref = HFGemma4ForCausalLM(hf_cfg).eval()
    _perturb(ref, seed=1, router_gain=router_gain)
    cfg = Gemma4TextConfig.from_dict(hf_cfg.to_dict())
    ours = Gemma4ForCausalLM(cfg, dtype=torch.float32)
    sd = {k.removeprefix("model."): v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    ours.load_state_dict(sd, strict=True)
    if fused:
        ours.fuse_()
    return ref, ours


FIXTURES = {
    "moe_all_experts": dict(moe=True, top_k=4, num_experts=4),
    "moe_routed": dict(moe=True, top_k=2, num_experts=8, router_gain=60.0),
    "dense": dict(moe=False),
    "dense_no_k_eq_v": dict(moe=False, k_eq_v=False),
    # Fused q/k/v (k_eq_v=False: with v) and q/k (K=V full layers), fused gate/up.
    "moe_routed_fused": dict(moe=True, top_k=2, num_experts=8, router_gain=60.0, fused=True),
    "dense_no_k_eq_v_fused": dict(moe=False, k_eq_v=False, fused=True),
}


@pytest.fixture(scope="module", params=list(FIXTURES))
def models(request):
    return _build(**FIXTURES[request.param])


def _ref_logits(ref, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return ref(input_ids=torch.tensor([ids])).logits[0].float()  # [N, V]


def _tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, 160, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_prefill_all_positions(models):
    ref, ours = models
    ids = _tokens(21, seed=2)
    sim = PagedSim(ours, block_size=4)
    out = ours(sim.batch([(0, ids)], all_logits=True), sim.caches)
    assert out.dtype == torch.float32 and out.shape == (21, 160)
    torch.testing.assert_close(out, _ref_logits(ref, ids), atol=ATOL, rtol=0)


def test_long_prompt_decode_crosses_window_with_released_blocks(models):
    ref, ours = models
    ids = _tokens(46, seed=3)  # prompt 40 + 6 decode steps, window 8
    expected = _ref_logits(ref, ids)
    sim = PagedSim(ours, block_size=4)
    out = ours(sim.batch([(0, ids[:40])], all_logits=True), sim.caches)
    torch.testing.assert_close(out, expected[:40], atol=ATOL, rtol=0)
    for p in range(40, 46):
        out = ours(sim.batch([(0, [ids[p]])]), sim.caches)
        torch.testing.assert_close(out[0], expected[p], atol=ATOL, rtol=0)
    # Blocks wholly before position 45 - 8 + 1 = 38 were released (NaN-filled, table entry -1).
    assert sim.released == 38 // 4 and sim.tables[0][S][:9] == [-1] * 9


def test_chunked_prefill_equals_one_shot(models):
    ref, ours = models
    ids = _tokens(37, seed=4)
    sim = PagedSim(ours, block_size=4)
    one_shot = ours(sim.batch([(0, ids)], all_logits=True), sim.caches)
    sim = PagedSim(ours, block_size=4)
    rows = [ours(sim.batch([(0, ids[a:b])], all_logits=True), sim.caches) for a, b in ((0, 13), (13, 23), (23, 37))]
    chunked = torch.cat(rows)
    torch.testing.assert_close(chunked, one_shot, atol=ATOL, rtol=0)
    torch.testing.assert_close(chunked, _ref_logits(ref, ids), atol=ATOL, rtol=0)


def test_mixed_batch_matches_each_request_alone(models):
    ref, ours = models
    a, b, c, d = _tokens(20, 5), _tokens(31, 6), _tokens(21, 7), _tokens(12, 8)
    sim = PagedSim(ours, block_size=4)
    # Bring b, c, d to their pre-step states (b and d decode next, c continues its prefill).
    ours(sim.batch([(1, b[:30]), (2, c[:12]), (3, d[:11])]), sim.caches)
    out = ours(sim.batch([(0, a), (1, b[30:]), (2, c[12:]), (3, d[11:])], all_logits=True), sim.caches)
    assert out.shape == (20 + 1 + 9 + 1, 160)
    torch.testing.assert_close(out[:20], _ref_logits(ref, a), atol=ATOL, rtol=0)
    torch.testing.assert_close(out[20], _ref_logits(ref, b)[30], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[21:30], _ref_logits(ref, c)[12:], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[30], _ref_logits(ref, d)[11], atol=ATOL, rtol=0)
    # Several decode rows at once, of different context lengths (one padded gather).
    out = ours(sim.batch([(1, [5]), (3, [7]), (0, [9])]), sim.caches)
    torch.testing.assert_close(out[0], _ref_logits(ref, b + [5])[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], _ref_logits(ref, d + [7])[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[2], _ref_logits(ref, a + [9])[-1], atol=ATOL, rtol=0)


def test_logits_only_for_sampled_rows(models):
    ref, ours = models
    ids = _tokens(9, seed=9)
    sim = PagedSim(ours, block_size=4)
    out = ours(sim.batch([(0, ids)]), sim.caches)
    assert out.shape == (1, 160)
    torch.testing.assert_close(out[0], _ref_logits(ref, ids)[-1], atol=ATOL, rtol=0)


def test_step_without_sampled_rows_still_fills_cache(models):
    ref, ours = models
    ids = _tokens(19, seed=12)
    sim = PagedSim(ours, block_size=4)
    batch = sim.batch([(0, ids[:12])])
    batch.logits_indices = batch.logits_indices[:0]  # an intermediate prefill chunk samples nothing
    assert ours(batch, sim.caches).shape == (0, 160)
    out = ours(sim.batch([(0, ids[12:])], all_logits=True), sim.caches)
    torch.testing.assert_close(out, _ref_logits(ref, ids)[12:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("grouped_min_tokens", [1, 10**9])
def test_moe_paths_in_model(grouped_min_tokens):
    ref, ours = _build(moe=True, top_k=2, num_experts=8, router_gain=60.0)
    for layer in ours.layers:
        layer.experts.grouped_min_tokens = grouped_min_tokens
    ids = _tokens(17, seed=10)
    sim = PagedSim(ours, block_size=4)
    out = ours(sim.batch([(0, ids[:16])], all_logits=True), sim.caches)
    out = torch.cat([out, ours(sim.batch([(0, ids[16:])]), sim.caches)])
    torch.testing.assert_close(out, _ref_logits(ref, ids), atol=ATOL, rtol=0)


def test_bf16_tracks_transformers_bf16():
    ref, ours = _build(moe=True, top_k=4, num_experts=4)
    ref = ref.to(torch.bfloat16)
    ours16 = Gemma4ForCausalLM(ours.config, dtype=torch.bfloat16)
    ours16.load_state_dict({k: v.bfloat16() for k, v in ours.state_dict().items()})
    ids = _tokens(30, seed=11)
    sim = PagedSim(ours16, block_size=4, dtype=torch.bfloat16)
    out = ours16(sim.batch([(0, ids[:26])], all_logits=True), sim.caches)
    out = torch.cat([out] + [ours16(sim.batch([(0, [t])]), sim.caches) for t in ids[26:]])
    expected = _ref_logits(ref, ids)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # Both round to bf16 at different points; they stay close, not equal.
    assert float((out - expected).abs().max()) < 0.5
    assert float(torch.nn.functional.cosine_similarity(out, expected, dim=-1).min()) > 0.98
    assert float((out.argmax(-1) == expected.argmax(-1)).float().mean()) >= 0.9


@pytest.mark.parametrize("int8", [False, True])
def test_fused_projections_equal_unfused(int8):
    """fuse_() renames and concatenates weights only: bf16 logits (one-row mv path and prefill GEMM path)
    match the unfused model's, also when fused after the int8 swap."""
    from gemmaserve.model.quantize import QuantLinear, quantize_model_int8_

    _, ours = _build(moe=True, top_k=2, num_experts=8, router_gain=60.0, k_eq_v=False)
    a = Gemma4ForCausalLM(ours.config, dtype=torch.bfloat16)
    a.load_state_dict({k: v.bfloat16() for k, v in ours.state_dict().items()})
    b = Gemma4ForCausalLM(ours.config, dtype=torch.bfloat16)
    b.load_state_dict(a.state_dict())
    if int8:
        quantize_model_int8_(a), quantize_model_int8_(b)
    b.fuse_()
    attn = b.layers[0].self_attn
    assert not hasattr(attn, "q_proj") and not hasattr(b.layers[0].mlp, "gate_proj")
    assert isinstance(attn.qkv_proj, QuantLinear) == int8
    assert attn.qkv_proj(torch.zeros(1, 64, dtype=torch.bfloat16)).shape == (1, 4 * 16 + 2 * 2 * 16)  # q, k, v
    ids = _tokens(14, seed=13)
    outs = []
    for m in (a, b):
        sim = PagedSim(m, block_size=4, dtype=torch.bfloat16)
        out = m(sim.batch([(0, ids[:11])], all_logits=True), sim.caches)
        outs.append(torch.cat([out] + [m(sim.batch([(0, [t])]), sim.caches) for t in ids[11:]]))
    assert outs[0].shape == (14, 160)
    torch.testing.assert_close(outs[1], outs[0], atol=2e-2, rtol=0)  # bit-equal here; GEMM blocking may differ elsewhere
    assert torch.equal(outs[1].argmax(-1), outs[0].argmax(-1))
