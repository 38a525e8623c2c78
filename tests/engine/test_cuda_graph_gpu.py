"""The engine on CUDA (skipped without a GPU): decode steps replay CUDA graphs by default, and greedy
tokens with graphs equal those of the eager engine (enforce_eager) for batches that join and leave."""

from __future__ import annotations

import functools

import pytest
import torch

import gemmaserve.engine.engine as engine_module
from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine.cuda_graph import DecodeGraphRunner
from gemmaserve.engine.engine import Engine
from gemmaserve.engine.model_runner import ModelRunner
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.model.loader import load_model
from gemmaserve.types import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = "cuda"
# Prompt lengths: two beyond the tiny model's 16-token sliding window, mixed context lengths.
PROMPTS = {"r0": (3, 40), "r1": (4, 9), "r2": (5, 23), "r3": (6, 2), "r4": (7, 17)}
JOINS = {0: ["r0", "r1"], 1: ["r2"], 5: ["r3", "r4"]}


@pytest.fixture(scope="module")
def tiny(demo_dir):
    return demo_dir


def _engine(path, dtype: str, monkeypatch, enforce_eager: bool = False, **runner_kw) -> Engine:
    # enforce_eager goes through EngineConfig, as `--enforce-eager` does; other runner options are
    # injected (the engine's own keywords would override a partial's).
    if runner_kw:
        monkeypatch.setattr(engine_module, "ModelRunner", functools.partial(ModelRunner, **runner_kw))
    model, config = load_model(path, dtype=getattr(torch, dtype), device=DEVICE)
    cfg = EngineConfig(
        model=str(path), dtype=dtype, device=DEVICE, max_model_len=256, enforce_eager=enforce_eager,
        cache=CacheConfig(block_size=4, num_blocks={SLIDING: 160, FULL: 160}, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
    )
    engine = Engine(model, config, cfg, None)
    monkeypatch.undo()
    return engine


def _generate(engine: Engine) -> dict[str, list[int]]:
    prompts = {rid: torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(s)).tolist()
               for rid, (s, n) in PROMPTS.items()}
    finals: dict[str, list[int]] = {}
    step = 0
    while step <= max(JOINS) or engine.has_unfinished_requests():
        for rid in JOINS.get(step, []):
            engine.add_request(rid, prompts[rid], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = list(out.token_ids)
        step += 1
        assert step < 200
    return finals


def test_graphs_are_on_by_default_and_capture_every_bucket(tiny, monkeypatch):
    engine = _engine(tiny, "float32", monkeypatch)
    graphs = engine.runner.graphs
    assert graphs is not None and graphs.capture_enabled
    assert set(graphs.graphs) == {(b, w) for b in graphs.batch_sizes for w in graphs.widths}


def test_greedy_tokens_with_graphs_equal_enforce_eager(tiny, monkeypatch):
    eager = _engine(tiny, "float32", monkeypatch, enforce_eager=True)
    assert eager.runner.graphs is None
    graphs = _engine(tiny, "float32", monkeypatch)
    replays = []
    for key, g in list(graphs.runner.graphs.graphs.items()):
        # Count replays, to prove the decode steps really ran from graphs.
        graphs.runner.graphs.graphs[key] = _CountingGraph(g, replays, key)
    expected = _generate(eager)
    got = _generate(graphs)
    assert got == expected
    assert len(replays) >= 10 and {b for b, _ in replays} >= {2, 4}


def test_bf16_graph_replay_equals_the_same_code_run_eagerly(tiny, monkeypatch):
    # Same kernels in the same order: replayed graphs and the eager static path agree bit for bit,
    # so their greedy tokens match exactly even in bf16.
    replayed = _generate(_engine(tiny, "bfloat16", monkeypatch))
    eager_static = _generate(_engine(tiny, "bfloat16", monkeypatch, enforce_eager=True, static_decode=True))
    assert replayed == eager_static
    assert sorted(replayed) == sorted(PROMPTS) and all(len(v) == 10 for v in replayed.values())


class _CountingGraph:
    def __init__(self, graph, log: list, key) -> None:
        self.graph, self.log, self.key = graph, log, key

    def replay(self) -> None:
        self.log.append(self.key)
        self.graph.replay()


@pytest.mark.parametrize("rows", [1, 3])
def test_static_decode_step_never_syncs_with_the_host(tiny, rows):
    # What capture forbids, caught by name: any device->host sync inside the step raises here.
    model, config = load_model(tiny, dtype=torch.bfloat16, device=DEVICE)
    model.fuse_()
    caches = model.allocate_kv_caches({SLIDING: 33, FULL: 33}, 4)
    runner = DecodeGraphRunner(model, caches, config, 4, {SLIDING: 32, FULL: 32}, 4, 64, DEVICE, capture=False)
    lens = [30, 7, 19][:rows]
    tables = [list(range(i * 8, i * 8 + (n + 3) // 4)) for i, n in enumerate(lens)]
    step = {"input_ids": [5] * rows, "positions": [n - 1 for n in lens], "seq_lens": lens,
            "slots": {k: [t[(n - 1) // 4] * 4 + (n - 1) % 4 for t, n in zip(tables, lens)] for k in (SLIDING, FULL)},
            "tables": {SLIDING: tables, FULL: tables}}
    key = runner.bucket(rows, max(lens))
    runner._load(*key, step)
    fn = runner._forward_fn(*key)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(runner.logits[:rows]).all()
