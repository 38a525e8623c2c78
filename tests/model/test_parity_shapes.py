"""Model construction and naming: the 26B-A4B shape on meta, state_dict names equal to the
checkpoint's text tensors, init_random_, and a bf16 smoke run through the paged cache."""

from __future__ import annotations

import torch
from parity_batch import PagedSim
from transformers import Gemma4Config as HFGemma4Config
from transformers.models.gemma4.modeling_gemma4 import Gemma4ForConditionalGeneration

from gemmaserve.model.config import FULL, SLIDING, Gemma4TextConfig
from gemmaserve.model.decoder import Gemma4ForCausalLM

TEXT_26B = {
    "model_type": "gemma4_text", "vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112,
    "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
    "global_head_dim": 512, "num_global_key_value_heads": 2, "attention_k_eq_v": True,
    "sliding_window": 1024, "layer_types": ([SLIDING] * 5 + [FULL]) * 5, "enable_moe_block": True,
    "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704, "final_logit_softcapping": 30.0,
}


def test_26b_shape_on_meta():
    cfg = Gemma4TextConfig.from_dict({"text_config": TEXT_26B, "model_type": "gemma4"})
    model = Gemma4ForCausalLM(cfg, dtype=torch.bfloat16, device="meta")
    sd = model.state_dict()
    # Spec §9: 25.233B text parameters.
    assert round(sum(t.numel() for t in sd.values()) / 1e9, 3) == 25.233
    assert sd["layers.5.self_attn.q_proj.weight"].shape == (8192, 2816)
    assert sd["layers.5.self_attn.k_proj.weight"].shape == (1024, 2816)
    assert "layers.5.self_attn.v_proj.weight" not in sd
    assert sd["layers.4.self_attn.v_proj.weight"].shape == (2048, 2816)
    assert sd["layers.0.experts.gate_up_proj"].shape == (128, 1408, 2816)
    assert sd["layers.0.experts.down_proj"].shape == (128, 2816, 704)
    assert sd["layers.29.router.per_expert_scale"].shape == (128,)
    assert sd["layers.29.layer_scalar"].shape == (1,)
    assert len([k for k in sd if k.startswith("layers.3.")]) == 22
    assert not any("inv_freq" in k or "embed_scale" in k for k in sd)


def test_state_dict_names_match_multimodal_checkpoint():
    text = dict(TEXT_26B, vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=6,
                num_attention_heads=2, num_key_value_heads=2, head_dim=16, global_head_dim=32,
                num_global_key_value_heads=1, num_experts=4, top_k_experts=2, moe_intermediate_size=8,
                hidden_size_per_layer_input=0, layer_types=[SLIDING] * 5 + [FULL])
    vision = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 16}
    hf_config = HFGemma4Config(text_config=text, vision_config=vision, audio_config=None)
    ref = Gemma4ForConditionalGeneration(hf_config)
    prefix = "model.language_model."
    ref_shapes = {k[len(prefix):]: tuple(v.shape) for k, v in ref.state_dict().items() if k.startswith(prefix)}
    cfg = Gemma4TextConfig.from_dict(ref.config.to_dict())
    ours = Gemma4ForCausalLM(cfg, dtype=torch.float32, device="meta")
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes


def test_init_random_is_plausible_and_seeded():
    cfg = Gemma4TextConfig.from_dict(dict(TEXT_26B, vocab_size=64, hidden_size=32, intermediate_size=16,
                                          num_hidden_layers=6, layer_types=[SLIDING] * 5 + [FULL], num_experts=4, top_k_experts=2,
                                          moe_intermediate_size=8, num_attention_heads=2, head_dim=8,
                                          global_head_dim=16, sliding_window=4))
    a = Gemma4ForCausalLM(cfg, dtype=torch.float32).init_random_(seed=3)
    b = Gemma4ForCausalLM(cfg, dtype=torch.float32).init_random_(seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert abs(float(sa["norm.weight"].mean()) - 1.0) < 0.1
    assert abs(float(sa["layers.0.router.per_expert_scale"].mean()) - 1.0) < 0.1
    assert float(sa["layers.2.layer_scalar"]) == 1.0
    assert abs(float(sa["embed_tokens.weight"].std()) - 0.02) < 0.005


def test_bf16_init_random_smoke():
    cfg = Gemma4TextConfig.from_dict(dict(TEXT_26B, vocab_size=128, hidden_size=64, intermediate_size=96,
                                          num_hidden_layers=6, layer_types=[SLIDING] * 5 + [FULL], num_experts=8,
                                          top_k_experts=2, moe_intermediate_size=32, num_attention_heads=4,
                                          head_dim=16, num_key_value_heads=2, global_head_dim=32, sliding_window=8))
    model = Gemma4ForCausalLM(cfg).init_random_(seed=0)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.randint(3, 128, (30,), generator=torch.Generator().manual_seed(0)).tolist()
    sim = PagedSim(model, block_size=4, dtype=torch.bfloat16)
    rows = [model(sim.batch([(0, ids[:24])], all_logits=True), sim.caches)]
    rows += [model(sim.batch([(0, [t])]), sim.caches) for t in ids[24:]]
    out = torch.cat(rows)
    assert out.dtype == torch.float32 and out.shape == (30, 128)
    assert torch.isfinite(out).all() and float(out.abs().max()) <= 30.0
    assert float(out.std()) > 0  # not a constant
