"""Every kernel path's fallback, chosen by the policy: the bf16 tiny model decodes on each ISA tier this
machine runs and with each kernel family switched off, staying as close to the fp32 model as the torch
path does, and a switched-off family's kernel is never called."""

from __future__ import annotations

import pytest
import torch
from parity_batch import PagedSim

from gemmaserve.demo import demo_config
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.decoder import Gemma4ForCausalLM
from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KERNELS, TIERS, CpuFeatures, KernelPolicy

BASE = KernelPolicy.default()
RUNNABLE = TIERS[: TIERS.index(CpuFeatures.detect().tier) + 1]
# The wrappers each family calls (ops/cpu_kernels.py); decode_layer calls the library directly.
CALLS = {"gemv": ["gemv"], "norm": ["rms_norm"], "decode_attention": ["decode_attention"], "qkv_post": ["qkv_post"],
         "moe_gemv": ["gemv_experts"], "geglu": ["geglu", "geglu_cols"]}


@pytest.fixture(scope="module")
def pair():
    cfg = Gemma4TextConfig.from_dict(demo_config("tiny"))
    m16 = Gemma4ForCausalLM(cfg, torch.bfloat16).init_random_(3).fuse_()
    m32 = Gemma4ForCausalLM(cfg, torch.float32).fuse_()
    m32.load_state_dict({k: v.float() for k, v in m16.state_dict().items()})
    return m16, m32


def _decode(model: Gemma4ForCausalLM) -> torch.Tensor:
    """A 13-token prefill then 6 decode steps of 2 sequences -> logits [12, V]."""
    vocab = model.config.vocab_size
    sim = PagedSim(model, block_size=4, num_blocks=64, dtype=model.dtype)
    model(sim.batch([(0, [2] + [(17 * j + 5) % vocab for j in range(1, 13)]), (1, [2, 9, 40])]), sim.caches)
    steps = [model(sim.batch([(0, [(31 * j + 7) % vocab]), (1, [(13 * j + 3) % vocab])]), sim.caches) for j in range(6)]
    return torch.cat(steps)


@pytest.fixture(scope="module")
def reference(pair):
    m16, m32 = pair
    m16.use_kernel_policy(BASE.torch_only())
    return _decode(m32), _decode(m16)  # fp32 yardstick, bf16 on torch's ops


@pytest.mark.skipif(BASE.lib is None, reason="CPU kernels unavailable")
@pytest.mark.parametrize("off", [None, *KERNELS])
@pytest.mark.parametrize("tier", RUNNABLE)
def test_each_fallback_decodes_as_accurately_as_torch(pair, reference, tier, off, monkeypatch):
    m16, _ = pair
    policy = BASE.for_tier(tier)
    if off is not None:
        policy = policy.without(off)
        for name in CALLS.get(off, []):
            monkeypatch.setattr(cpu_kernels, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} called while {off} is off"))
    m16.use_kernel_policy(policy)
    assert all(m.kernel_policy is policy for m in m16.modules() if hasattr(m, "kernel_policy"))
    got = _decode(m16)
    ref32, torch16 = reference
    torch_err = float((torch16 - ref32).abs().mean())
    assert float((got - ref32).abs().mean()) <= 1.1 * torch_err
