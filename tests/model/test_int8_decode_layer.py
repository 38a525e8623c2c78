"""The one-call decode layer (model/fast_decode.py) on a weight-only int8 model: the same result as the
torch int8 layer on the same kernel paths, taken for every decode step, and left for partly quantized
layers or with the kernels switched off."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from layer_inputs import count_fast_layers, layer_plan, layer_rope
from parity_batch import PagedSim

import gemmaserve.model.fast_decode as fast_decode
from gemmaserve.demo import demo_config
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.decoder import Gemma4ForCausalLM
from gemmaserve.model.quantize import QuantExperts, QuantLinear, quantize_model_int8_
from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KernelPolicy

POLICY = KernelPolicy.default()
needs_kernel = pytest.mark.skipif(POLICY.lib is None, reason="CPU kernels unavailable")


def _tiny(int8: bool = True, seed: int = 3) -> Gemma4ForCausalLM:
    """The tiny demo model with decisive routing (no near-tied experts for one ulp to flip), quantized
    and then fused as load_model + the model runner do."""
    cfg = Gemma4TextConfig.from_dict(demo_config("tiny"))
    model = Gemma4ForCausalLM(cfg, torch.bfloat16).init_random_(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.router.proj.weight.mul_(60.0)
    return (quantize_model_int8_(model) if int8 else model).fuse_()


@needs_kernel
def test_int8_layer_packs_int8_tensors_and_scales():
    model = _tiny()
    layer = model.layers[5]
    assert isinstance(layer.self_attn.qkv_proj, QuantLinear) and isinstance(layer.experts, QuantExperts)
    tensors, scales = fast_decode._tensors(layer)
    slots = {name: i for i, name in enumerate(fast_decode._WEIGHTS)}
    assert tensors[slots["self_attn.qkv_proj.weight"]] is layer.self_attn.qkv_proj.qweight
    assert tensors[slots["experts.down_proj"]] is layer.experts.down_q
    assert tensors[slots["router.proj.weight"]].dtype == torch.bfloat16  # the router stays bf16
    assert [s.data_ptr() for s in scales] == [
        layer.self_attn.qkv_proj.scale.data_ptr(), layer.self_attn.o_proj.scale.data_ptr(),
        layer.mlp.gate_up_proj.scale.data_ptr(), layer.mlp.down_proj.scale.data_ptr(),
        layer.experts.gate_up_scale.data_ptr(), layer.experts.down_scale.data_ptr(),
    ]  # fmt: skip
    packed = fast_decode._packed(layer)
    assert list(packed.dims)[-2:] == [1, 0]  # int8, bf16 scales
    assert list(fast_decode._packed(_tiny(int8=False).layers[5]).dims)[-2:] == [0, 0]
    assert list(packed.ptrs)[-6:] == [s.data_ptr() for s in scales]


@needs_kernel
def test_partly_quantized_layer_takes_the_torch_path():
    model = _tiny(int8=False)
    layer = model.layers[0]
    layer.self_attn.o_proj = QuantLinear.from_linear(layer.self_attn.o_proj)
    assert fast_decode._tensors(layer) is None
    assert fast_decode._tensors(model.layers[1]) is not None


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, 8, 13])  # 13: two 8-row GEMV groups
def test_one_call_int8_layer_matches_torch_int8_layer(rows, monkeypatch):
    model = _tiny()
    sim = PagedSim(model, block_size=4, num_blocks=64, dtype=torch.bfloat16)
    for s in range(rows):
        model(sim.batch([(s, [3 + s, 9, 27 + s, 4, 5][: 2 + s % 4])]), sim.caches)
    batch = sim.batch([(s, [11 + s]) for s in range(rows)])
    g = torch.Generator().manual_seed(rows)
    for i in (0, 5):  # a sliding layer and the full (K=V) layer
        layer, kind = model.layers[i], model.config.layer_types[i]
        h = torch.randn(rows, model.config.hidden_size, generator=g).bfloat16()
        plan, cos_sin = layer_plan(model, batch, kind), layer_rope(model, batch, kind)
        slots = batch.kinds[kind].slot_mapping
        kv_fast = (sim.caches[i][0].clone(), sim.caches[i][1].clone())
        fast = fast_decode.decode_layer(layer, h, cos_sin, plan, slots, kv_fast, None, POLICY)
        assert fast is not None
        # The torch int8 layer on the kernel paths the one-call layer composes (past 8 rows it would
        # take _weight_int8pack_mm and the grouped MoE, other rounding points).
        model.use_kernel_policy(dataclasses.replace(POLICY, int8_gemv_max_rows=16, int8_moe_max_tokens=16))
        kv_slow = (sim.caches[i][0].clone(), sim.caches[i][1].clone())
        slow = layer(h, cos_sin, plan, slots, kv_slow, None)  # MIXED mode: never the one-call layer
        model.use_kernel_policy(POLICY)
        assert fast.shape == slow.shape == (rows, model.config.hidden_size)
        # The same kernels in the same order; only gelu's tanh (the fused layer's GeGLU vs torch's
        # gelu) may move a rare element by one bf16 ulp.
        assert float((fast != slow).float().mean()) < 0.02
        assert float((fast.float() - slow.float()).abs().max()) <= 0.02 * float(slow.float().abs().max())
        for a, b in zip(kv_fast, kv_slow):
            assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))  # K/V come before any GeGLU


def _decode(model, prompt, forced) -> torch.Tensor:
    sim = PagedSim(model, block_size=4, num_blocks=64, dtype=torch.bfloat16)
    model(sim.batch([(0, prompt)]), sim.caches)
    return torch.cat([model(sim.batch([(0, [tok])]), sim.caches) for tok in forced])


@needs_kernel
def test_int8_model_decodes_in_one_call_per_layer(monkeypatch):
    model = _tiny()
    vocab, layers = model.config.vocab_size, model.config.num_hidden_layers
    prompt = [2] + [(17 * j + 5) % vocab for j in range(1, 13)]
    forced = [(31 * j + 7) % vocab for j in range(10)]  # past the 16-token sliding window
    seen = count_fast_layers(monkeypatch)  # [one-call layers, torch layers]
    one_call = _decode(model, prompt, forced)
    assert seen == [len(forced) * layers, 0]  # the prefill (a MIXED step) runs the torch layers unasked
    model.use_kernel_policy(POLICY.without("decode_layer"))
    per_op = _decode(model, prompt, forced)  # torch int8 layers on the int8 GEMV kernels
    model.use_kernel_policy(POLICY.torch_only())
    monkeypatch.setattr(cpu_kernels, "gemv_int8", lambda *a, **k: pytest.fail("kernel called while disabled"))
    monkeypatch.setattr(cpu_kernels, "gemv_int8_experts", lambda *a, **k: pytest.fail("kernel called while disabled"))
    seen[:] = [0, 0]
    torch_only = _decode(model, prompt, forced)
    assert seen == [0, len(forced) * layers]
    # One-call and per-op layers run the same kernels: the steps' logits are bit-equal but for a rare
    # one-ulp GeGLU rounding or exact router tie (here once, in the last layer of step 4: max 0.06).
    # torch's int8 ops (_weight_int8pack_mm, the per-expert loop) round elsewhere but agree to well
    # within the int8 tolerance of test_loader_quant.py.
    assert int((one_call == per_op).all(-1).sum()) >= len(forced) - 2
    assert float((one_call - per_op).abs().max()) <= 0.1
    assert float((one_call - torch_only).abs().mean()) <= 0.05
