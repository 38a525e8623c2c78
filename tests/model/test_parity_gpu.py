"""CUDA runs of the decoder and MoE ops (skipped without a GPU): prefill and paged decode logits
equal transformers' fp32 CPU logits, the batched gather MoE form equals the grouped one, and decode
steps replayed from CUDA graphs equal the eager path and transformers (head_dim 512, long context)."""

from __future__ import annotations

import pytest
import torch
from parity_batch import PagedSim
from test_parity import ATOL, F, S, _build, _perturb, _ref_logits, _tokens
from transformers import Gemma4TextConfig as HFConfig
from transformers.models.gemma4.modeling_gemma4 import Gemma4ForCausalLM as HFGemma4ForCausalLM

from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.decoder import Gemma4ForCausalLM
from gemmaserve.ops.moe import grouped_mm_ok, moe_experts, moe_gather, moe_grouped, moe_grouped_mm

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


@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_cuda_grouped_mm_matches_grouped_loop_bf16(tokens):
    # The grouped GEMM (sm90+) against the per-expert loop at decode and prefill sizes, 26B-A4B-like
    # routing (top-8 of 128: idle experts between busy ones); moe_experts takes it on CUDA bf16.
    if not grouped_mm_ok(torch.zeros(1, dtype=torch.bfloat16, device="cuda"),
                         torch.zeros(1, dtype=torch.bfloat16, device="cuda")):
        pytest.skip("torch._grouped_mm needs sm90+")
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 256, generator=gen).bfloat16().cuda()
    gate_up = (torch.randn(128, 2 * 64, 256, generator=gen) * 0.05).bfloat16().cuda()
    down = (torch.randn(128, 256, 64, generator=gen) * 0.05).bfloat16().cuda()
    idx = torch.stack([torch.randperm(128, generator=gen)[:8] for _ in range(tokens)]).cuda()
    w = torch.softmax(torch.randn(tokens, 8, generator=gen), -1).cuda()
    got = moe_grouped_mm(x, gate_up, down, idx, w)
    torch.testing.assert_close(got.float(), moe_grouped(x, gate_up, down, idx, w).float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(moe_experts(x, gate_up, down, idx, w), got)
    assert torch.equal(moe_grouped_mm(x, gate_up, down, idx, w), got)  # deterministic


# -- CUDA-graph decode (engine.cuda_graph) -----------------------------------------------------


class _DeviceSim(PagedSim):
    """PagedSim on `device` whose last block is never handed out: the graph runner's scratch block."""

    def __init__(self, model, device: str, num_blocks: int = 64, **kw) -> None:
        super().__init__(model, num_blocks=num_blocks, **kw)
        self.device = device
        self.scratch = num_blocks - 1
        for free in self.free.values():
            free.remove(self.scratch)
        self.caches = [(k.to(device), v.to(device)) for k, v in self.caches]

    def batch(self, steps, all_logits: bool = False):
        b = super().batch(steps, all_logits)
        for name in ("input_ids", "positions", "query_start_loc", "seq_lens", "logits_indices"):
            setattr(b, name, getattr(b, name).to(self.device))
        for meta in b.kinds.values():
            meta.block_tables, meta.slot_mapping = meta.block_tables.to(self.device), meta.slot_mapping.to(self.device)
        return b

    def step_inputs(self, steps: list[tuple[int, int]]) -> dict:
        """The graph runner's inputs for decode tokens (seq, token) already placed by batch()."""
        bs = self.block_size
        pos = [self.lens[s] - 1 for s, _ in steps]
        tables = {k: [list(self.tables[s][k]) for s, _ in steps] for k in self.free}
        return {
            "input_ids": [t for _, t in steps],
            "positions": pos,
            "seq_lens": [p + 1 for p in pos],
            "slots": {k: [t[p // bs] * bs + p % bs for t, p in zip(tables[k], pos)] for k in self.free},
            "tables": tables,
        }


def _graph_decode(ours, prompts: dict[int, list[int]], decode: dict[int, list[int]], device: str, capture: bool):
    """Prefill each prompt eagerly, then decode the sequences together; every decode step runs
    three ways on the same caches: the normal eager forward, the graph runner replaying (or, with
    capture=False, calling) its bucket, and the graph runner's eager mode. Returns per sequence the
    three logits lists [prefill rows + decode rows, V]."""
    from gemmaserve.engine.cuda_graph import DecodeGraphRunner

    sim = _DeviceSim(ours, device, block_size=4, dtype=ours.dtype)
    scratch = {k: sim.scratch for k in sim.free}
    runners = [
        DecodeGraphRunner(ours, sim.caches, ours.config, 4, scratch, 4, 64, device, capture=c, min_graph_width=16)
        for c in (capture, False)
    ]
    if capture:
        runners[0].capture()
    eager = {s: [] for s in prompts}
    graph = {s: [] for s in prompts}
    static = {s: [] for s in prompts}
    with torch.inference_mode():
        for s, ids in prompts.items():
            out = ours(sim.batch([(s, ids)], all_logits=True), sim.caches)
            for rows in (eager, graph, static):
                rows[s].append(out)
        for i in range(len(next(iter(decode.values())))):
            steps = [(s, toks[i]) for s, toks in decode.items()]
            normal = ours(sim.batch([(s, [t]) for s, t in steps]), sim.caches)  # also places the tokens
            inputs = sim.step_inputs(steps)
            replayed, direct = runners[0].run(inputs), runners[1].run(inputs)
            for r, (s, _) in enumerate(steps):
                eager[s].append(normal[r : r + 1])
                graph[s].append(replayed[r : r + 1])
                static[s].append(direct[r : r + 1])
    cat = lambda d: {s: torch.cat(v).float().cpu() for s, v in d.items()}  # noqa: E731
    return cat(eager), cat(graph), cat(static), runners[0]


@pytest.mark.parametrize("fixture", [dict(moe=True, top_k=2, num_experts=8, router_gain=60.0, fused=True),
                                     dict(moe=False)])
def test_cuda_graph_decode_matches_eager_and_transformers(fixture):
    ref, ours = _build(**fixture)
    ours = ours.cuda()
    ids = {0: _tokens(40, seed=30), 1: _tokens(13, seed=31), 2: _tokens(6, seed=32)}
    n_dec = 5
    prompts = {s: v[: len(v) - n_dec] for s, v in ids.items()}
    decode = {s: v[len(v) - n_dec :] for s, v in ids.items()}
    eager, graph, static, runner = _graph_decode(ours, prompts, decode, "cuda", capture=True)
    assert set(runner.graphs) == {(b, w) for b in (1, 2, 4) for w in (16, 32, 64)}
    for s, v in ids.items():
        expected = _ref_logits(ref, v)  # [N, V] transformers fp32 on CPU
        torch.testing.assert_close(eager[s], expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(graph[s], expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(graph[s], static[s], atol=0, rtol=0)  # a replay is the same code


WIDE_ATOL = 1e-3


def _build_real_heads(window: int = 16, dtype: torch.dtype = torch.float32):
    """A tiny-width model with 26B-A4B's attention layout: full layers head_dim 512 with 2 KV heads
    (K=V), sliding layers head_dim 256 with 8 KV heads, 16 query heads; MoE top-2 of 8."""
    hf_cfg = HFConfig(
        vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256,
        global_head_dim=512, num_global_key_value_heads=2, attention_k_eq_v=True,
        sliding_window=window, layer_types=[S, F, S, F], enable_moe_block=True,
        num_experts=8, top_k_experts=2, moe_intermediate_size=24,
        hidden_size_per_layer_input=0, final_logit_softcapping=30.0,
    )
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = HFGemma4ForCausalLM(hf_cfg).eval()
    _perturb(ref, seed=2, router_gain=60.0)
    ours = Gemma4ForCausalLM(Gemma4TextConfig.from_dict(hf_cfg.to_dict()), dtype=dtype)
    ours.load_state_dict({k.removeprefix("model."): v for k, v in ref.state_dict().items() if k != "lm_head.weight"})
    return ref, ours


def test_cuda_graph_head_dim_512_long_context_matches_transformers():
    ref, ours = _build_real_heads(window=16)
    ours = ours.cuda()
    assert ours.config.global_head_dim == 512 and ours.config.num_global_key_value_heads == 2
    ids = {0: _tokens(58, seed=40), 1: _tokens(21, seed=41)}  # 58 tokens: well past the 16-token window
    n_dec = 6
    prompts = {s: v[: len(v) - n_dec] for s, v in ids.items()}
    decode = {s: v[len(v) - n_dec :] for s, v in ids.items()}
    eager, graph, static, _ = _graph_decode(ours, prompts, decode, "cuda", capture=True)
    for s, v in ids.items():
        expected = _ref_logits(ref, v)
        # 16 heads of 512: longer fp32 dot products than test_parity's model, hence WIDE_ATOL.
        torch.testing.assert_close(eager[s], expected, atol=WIDE_ATOL, rtol=0)
        torch.testing.assert_close(graph[s], expected, atol=WIDE_ATOL, rtol=0)
        torch.testing.assert_close(graph[s], eager[s], atol=ATOL, rtol=0)
        torch.testing.assert_close(graph[s], static[s], atol=0, rtol=0)


def test_cuda_graph_bf16_replay_is_the_eager_static_path_bit_for_bit():
    ref, ours = _build_real_heads(window=16, dtype=torch.bfloat16)
    ours = ours.cuda()  # bf16 weights and KV cache, fp32 RoPE tables and embed scale, as served
    ids = {0: _tokens(50, seed=50), 1: _tokens(9, seed=51), 2: _tokens(30, seed=52)}
    prompts = {s: v[:-4] for s, v in ids.items()}
    decode = {s: v[-4:] for s, v in ids.items()}
    eager, graph, static, _ = _graph_decode(ours, prompts, decode, "cuda", capture=True)
    for s in ids:
        assert torch.isfinite(graph[s]).all()
        torch.testing.assert_close(graph[s], static[s], atol=0, rtol=0)
        # Other MoE and attention kernels than the normal eager path: in bf16 neither is closer to
        # the fp32 reference than rounding allows, so the graph path may not be farther from it.
        expected = _ref_logits(ref, ids[s])[-4:]
        graph_err, eager_err = (graph[s][-4:] - expected).abs(), (eager[s][-4:] - expected).abs()
        assert graph_err.mean() <= 1.25 * eager_err.mean() and graph_err.max() <= 1.25 * eager_err.max()
