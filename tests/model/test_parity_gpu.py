"""CUDA runs of the decoder and MoE ops (skipped without a GPU): prefill and paged decode logits
equal transformers' fp32 CPU logits, and the batched gather MoE form equals the grouped one."""

from __future__ import annotations

import pytest
import torch
from parity_batch import PagedSim
from test_parity import ATOL, _build, _ref_logits, _tokens

from gemmaserve.ops.moe import moe_gather, moe_grouped

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


class _CudaSim(PagedSim):
    """PagedSim whose caches and batches live on the GPU."""

    def __init__(self, model, **kw) -> None:
        super().__init__(model, **kw)
        self.caches = [(k.cuda(), v.cuda()) for k, v in self.caches]

    def batch(self, steps, all_logits: bool = False):
        b = super().batch(steps, all_logits)
        for name in ("input_ids", "positions", "query_start_loc", "seq_lens", "logits_indices"):
            setattr(b, name, getattr(b, name).cuda())
        for meta in b.kinds.values():
            meta.block_tables, meta.slot_mapping = meta.block_tables.cuda(), meta.slot_mapping.cuda()
        return b


@pytest.mark.parametrize("fixture", [dict(moe=True, top_k=2, num_experts=8, router_gain=60.0), dict(moe=False)])
def test_cuda_prefill_and_decode_match_transformers(fixture):
    ref, ours = _build(**fixture)
    ours = ours.cuda()
    ids = _tokens(44, seed=20)
    expected = _ref_logits(ref, ids)
    sim = _CudaSim(ours, block_size=4)
    out = [ours(sim.batch([(0, ids[:40])], all_logits=True), sim.caches)]
    out += [ours(sim.batch([(0, [t])]), sim.caches) for t in ids[40:]]
    torch.testing.assert_close(torch.cat(out).cpu(), expected, atol=ATOL, rtol=0)


def test_cuda_moe_paths_agree():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=gen).cuda()
    gate_up = (torch.randn(16, 48, 64, generator=gen) * 0.1).cuda()
    down = (torch.randn(16, 64, 24, generator=gen) * 0.1).cuda()
    idx = torch.stack([torch.randperm(16, generator=gen)[:4] for _ in range(5)]).cuda()
    w = torch.rand(5, 4, generator=gen).cuda()
    torch.testing.assert_close(moe_gather(x, gate_up, down, idx, w), moe_grouped(x, gate_up, down, idx, w),
                               atol=1e-5, rtol=1e-5)
