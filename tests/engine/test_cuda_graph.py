"""The CUDA-graph decode runner's static-buffer path, run eagerly on CPU: its logits equal the normal
path's across decode steps padded to buckets, with requests joining, leaving and outgrowing a bucket."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gemmaserve.demo import TEXT_CONFIGS
from gemmaserve.engine.cuda_graph import DecodeGraphRunner, batch_buckets, graphs_supported, width_buckets
from gemmaserve.engine.model_runner import ModelRunner
from gemmaserve.engine.scheduler import ScheduledRequest
from gemmaserve.model.config import FULL, SLIDING, Gemma4TextConfig
from gemmaserve.model.decoder import Gemma4ForCausalLM

BS = 4
NUM_BLOCKS = 40
WINDOW = 8


def test_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert width_buckets(16, 8192) == [256, 512, 1024, 2048, 4096, 8192]
    assert width_buckets(16, 1000) == [256, 512, 1008]
    assert width_buckets(16, 100) == [112]
    assert width_buckets(4, 40, min_width=6) == [8, 16, 32, 40]


@pytest.fixture(scope="module")
def model():
    raw = dict(TEXT_CONFIGS["tiny"], sliding_window=WINDOW)
    cfg = Gemma4TextConfig.from_dict(raw)
    return Gemma4ForCausalLM(cfg, dtype=torch.float32).init_random_(seed=3, std=0.1).fuse_()


class _Sim:
    """Block tables for fake requests (what the scheduler and KV manager do in the engine):
    sliding blocks wholly out of the window are released (-1) and, like every block nobody owns,
    hold NaN in both runners' caches, so reading one would poison the logits."""

    def __init__(self, runners: list[ModelRunner], cfg: Gemma4TextConfig) -> None:
        self.runners, self.cfg = runners, cfg
        self.free = {k: list(range(NUM_BLOCKS)) for k in (SLIDING, FULL)}
        self.reqs: dict[str, SimpleNamespace] = {}
        for r in runners:
            for k, v in r.kv_caches:
                k.fill_(float("nan"))
                v.fill_(float("nan"))

    def _poison(self, kind: str, blk: int) -> None:
        for r in self.runners:
            for i, t in enumerate(self.cfg.layer_types):
                if t == kind:
                    r.kv_caches[i][0][blk].fill_(float("nan"))
                    r.kv_caches[i][1][blk].fill_(float("nan"))

    def add(self, rid: str, prompt: list[int]) -> None:
        self.reqs[rid] = SimpleNamespace(all_token_ids=list(prompt), num_computed_tokens=0,
                                         prompt_logprobs=None, scores_only=False,
                                         block_tables={SLIDING: [], FULL: []}, num_tokens=len(prompt))

    def finish(self, rid: str) -> None:
        req = self.reqs.pop(rid)
        for kind, table in req.block_tables.items():
            for blk in table:
                if blk >= 0:
                    self._poison(kind, blk)
                    self.free[kind].append(blk)

    def schedule(self, plan: dict[str, int]) -> list[ScheduledRequest]:
        """plan: request -> new tokens this step; allocates and releases blocks first."""
        out = []
        for rid, n in plan.items():
            req = self.reqs[rid]
            end = req.num_computed_tokens + n
            oldest = req.num_computed_tokens - WINDOW + 1  # oldest key this step's first query sees
            table = req.block_tables[SLIDING]
            for b, blk in enumerate(table):
                if blk >= 0 and (b + 1) * BS <= oldest:
                    self._poison(SLIDING, blk)
                    self.free[SLIDING].append(blk)
                    table[b] = -1
            for kind, table in req.block_tables.items():
                while len(table) * BS < end:
                    table.append(self.free[kind].pop(0))
            out.append(ScheduledRequest(req, n))
        return out

    def advance(self, scheduled: list[ScheduledRequest], gen: torch.Generator) -> None:
        for s in scheduled:
            s.request.num_computed_tokens += s.num_new_tokens
            if s.samples:
                s.request.all_token_ids.append(int(torch.randint(3, 512, (1,), generator=gen)))
                s.request.num_tokens += 1


def _runner(model, static: bool, **kw) -> ModelRunner:
    return ModelRunner(model, model.config, {SLIDING: NUM_BLOCKS, FULL: NUM_BLOCKS}, BS, torch.float32, "cpu",
                       sampler=None, static_decode=static, max_num_seqs=8, max_model_len=64, **kw)


def test_static_decode_matches_normal_path_as_requests_join_and_leave(model):
    eager = _runner(model, static=False)
    static = _runner(model, static=True, max_graph_len=32, min_graph_width=8)
    assert eager.graphs is None and static.graphs is not None
    assert static.graphs.widths == [8, 16, 32] and static.graphs.batch_sizes == [1, 2, 4, 8]
    sim = _Sim([eager, static], model.config)
    gen = torch.Generator().manual_seed(0)
    prompt = lambda n: torch.randint(3, 512, (n,), generator=gen).tolist()  # noqa: E731
    # step -> (joins with prompt lengths, leaves); every other request decodes one token a step.
    joins = {0: {"a": 5}, 2: {"b": 11, "c": 3}, 5: {"d": 2, "e": 7, "f": 1}, 9: {"g": 4}}
    leaves = {7: ["c"], 10: ["a", "e"], 13: ["b"]}
    used_static = 0
    for t in range(16):
        for rid in leaves.get(t, []):
            sim.finish(rid)
        for rid, n in joins.get(t, {}).items():
            sim.add(rid, prompt(n))
        plan = {rid: r.num_tokens - r.num_computed_tokens for rid, r in sim.reqs.items()}
        scheduled = sim.schedule(plan)
        expected = eager.execute(scheduled)
        is_static = static._static_step(scheduled) is not None
        used_static += is_static
        got = static.execute(scheduled)
        assert got.shape == expected.shape == (len(scheduled), 512)
        assert torch.isfinite(expected).all()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=f"step {t}")
        sim.advance(scheduled, gen)
    # Pure-decode steps of 1, 2, 3, 4, 5 and 6 requests at contexts up to ~24 tokens took the static
    # path at several buckets; prefill and mixed steps did not.
    assert used_static >= 6
    assert {b for b, _ in static.graphs._eager} >= {1, 4, 8}
    assert {w for _, w in static.graphs._eager} >= {8, 16, 32}


def test_contexts_past_the_widest_graph_run_eagerly(model):
    eager = _runner(model, static=False)
    static = _runner(model, static=True, max_graph_len=16, min_graph_width=8)
    sim = _Sim([eager, static], model.config)
    gen = torch.Generator().manual_seed(1)
    sim.add("x", torch.randint(3, 512, (13,), generator=gen).tolist())
    kinds = []
    for _ in range(6):  # context 13 -> 18: crosses the widest graph (16 keys)
        r = sim.reqs["x"]
        scheduled = sim.schedule({"x": r.num_tokens - r.num_computed_tokens})
        kinds.append(static._static_step(scheduled) is not None)
        torch.testing.assert_close(static.execute(scheduled), eager.execute(scheduled), atol=1e-5, rtol=1e-5)
        sim.advance(scheduled, gen)
    assert kinds == [False, True, True, True, False, False]  # prefill, seq 14..16 static, 17, 18 eager


def test_scratch_block_is_outside_the_managers_blocks(model):
    static = _runner(model, static=True)
    k, _ = static.kv_caches[0]
    assert k.shape[0] == NUM_BLOCKS + 1 and static.graphs.scratch == {SLIDING: NUM_BLOCKS, FULL: NUM_BLOCKS}
    assert _runner(model, static=False).kv_caches[0][0].shape[0] == NUM_BLOCKS
    # On CPU graphs are off unless asked for; a runner without capture never records one.
    assert _runner(model, static=None).graphs is None
    assert isinstance(static.graphs, DecodeGraphRunner) and not static.graphs.capture_enabled


def test_int8_experts_are_not_capturable(model):
    assert graphs_supported(model)
    layer = SimpleNamespace(enable_moe=True, experts=SimpleNamespace())  # QuantExperts has no gate_up_proj
    assert not graphs_supported(SimpleNamespace(layers=[layer]))
    assert not graphs_supported(SimpleNamespace())  # a test double without decoder layers


def test_26b_a4b_shape_static_decode_builds_on_the_model_device():
    # The real shape on the meta device: every buffer, plan and activation must be created on the
    # model's device (a stray CPU tensor would raise when mixed with meta ones), at the widest graph
    # and the largest batch, without allocating 50 GB.
    cfg = Gemma4TextConfig.from_dict(TEXT_CONFIGS["26b-a4b"])
    model = Gemma4ForCausalLM(cfg, dtype=torch.bfloat16, device="meta")
    runner = ModelRunner(model, cfg, {SLIDING: 300, FULL: 1200}, 16, torch.bfloat16, "meta", sampler=None,
                         static_decode=True, max_num_seqs=64, max_model_len=32768)
    graphs = runner.graphs
    assert graphs.batch_sizes == [1, 2, 4, 8, 16, 32, 64] and graphs.widths == [256, 512, 1024, 2048, 4096, 8192]
    assert graphs.buf.device.type == "meta" and runner.kv_caches[5][0].shape == (1201, 16, 2, 512)
    assert runner.kv_caches[0][0].shape == (301, 16, 8, 256)
    for lens in ([7], [100] * 33 + [8000]):  # buckets (1, 256) and (64, 8192)
        reqs = [SimpleNamespace(all_token_ids=list(range(n)), num_computed_tokens=n - 1, num_tokens=n,
                                prompt_logprobs=None, scores_only=False,
                                block_tables={SLIDING: [i % 300 for i in range((n + 15) // 16)],
                                              FULL: [i % 1200 for i in range((n + 15) // 16)]}) for n in lens]
        scheduled = [ScheduledRequest(r, 1) for r in reqs]
        assert runner._static_step(scheduled) is not None
        out = runner.execute(scheduled)
        assert out.device.type == "meta" and out.shape == (len(lens), 262144) and out.dtype == torch.float32
    assert set(graphs._eager) == {(1, 256), (64, 8192)}


def test_prepare_puts_the_batch_on_a_non_cpu_device_without_pinning():
    # Pinned staging is for CUDA only; other devices (meta here, as for config-only models) get
    # plain copies, and every field of the batch lands on the runner's device.
    cfg = Gemma4TextConfig.from_dict(dict(TEXT_CONFIGS["tiny"], sliding_window=WINDOW))
    model = Gemma4ForCausalLM(cfg, dtype=torch.bfloat16, device="meta")
    runner = ModelRunner(model, cfg, {SLIDING: 8, FULL: 8}, BS, torch.bfloat16, "meta", sampler=None)
    req = SimpleNamespace(all_token_ids=[5, 6, 7, 8, 9], num_computed_tokens=0, num_tokens=5,
                          prompt_logprobs=None, scores_only=False,
                          block_tables={SLIDING: [3, 4], FULL: [1, 2]})
    batch = runner.prepare([ScheduledRequest(req, 5)])
    fields = [batch.input_ids, batch.positions, batch.query_start_loc, batch.seq_lens, batch.logits_indices]
    fields += [t for m in batch.kinds.values() for t in (m.block_tables, m.slot_mapping)]
    assert all(t.device.type == "meta" for t in fields)
    assert batch.query_lens_cpu == [5] and batch.seq_lens_cpu == [5]


def test_enforce_eager_flag_reaches_the_runner(model, monkeypatch):
    # `--enforce-eager` -> EngineConfig.enforce_eager -> ModelRunner, with the scheduler's batch
    # limit and the served context length that size the graph buckets.
    import argparse
    import dataclasses

    import gemmaserve.engine.engine as engine_module
    from gemmaserve.config import CacheConfig, SchedulerConfig, add_engine_args, engine_config_from_args

    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert engine_config_from_args(p.parse_args(["--model", "m"])).enforce_eager is False
    cfg = engine_config_from_args(p.parse_args(["--model", "m", "--enforce-eager", "--max-model-len", "40"]))
    assert cfg.enforce_eager is True
    seen = {}

    def spy(*args, **kw):
        seen.update(kw)
        return ModelRunner(*args, **kw)

    monkeypatch.setattr(engine_module, "ModelRunner", spy)
    cfg = dataclasses.replace(
        cfg, dtype="float32",
        cache=CacheConfig(block_size=BS, num_blocks={SLIDING: NUM_BLOCKS, FULL: NUM_BLOCKS}),
        scheduler=SchedulerConfig(max_num_seqs=3, max_num_batched_tokens=32),
    )
    engine_module.Engine(model, model.config, cfg, None)
    from gemmaserve.ops.dispatch import KernelPolicy

    # ... and the kernel policy, built once from the config's kernel settings for the engine's device.
    assert seen == {"max_num_seqs": 3, "max_model_len": 40, "enforce_eager": True, "compile_decode": None,
                    "kernel_policy": KernelPolicy.create(cfg.kernels, "cpu")}


def test_compile_bucket_spec():
    # GEMMASERVE_COMPILE_DECODE names the buckets compiled before capture (experimental).
    from gemmaserve.engine.cuda_graph import compile_buckets

    assert compile_buckets(None) == set() and compile_buckets(" ") == set()
    assert compile_buckets("1x1024, 8x512") == {(1, 1024), (8, 512)}
    assert compile_buckets("all") == "all"
    with pytest.raises(ValueError, match="is not BxW"):
        compile_buckets("1024")
