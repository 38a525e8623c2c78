"""KVCacheManager: 26B KV sizing, sliding-window release, prefix reuse under the hybrid rule."""

import pytest

from gemmaserve.engine.kv_cache import KVCacheManager, derive_num_blocks, hash_block, kv_cache_report
from gemmaserve.engine.request import Request
from gemmaserve.model.config import FULL, SLIDING, AttentionKindSpec, Gemma4TextConfig
from gemmaserve.types import SamplingParams

GIB = 1 << 30


def gemma4_26b_config() -> Gemma4TextConfig:
    # Values of spec §2.2 (google/gemma-4-26B-A4B-it text_config).
    return Gemma4TextConfig.from_dict(
        {
            "text_config": {
                "model_type": "gemma4_text",
                "vocab_size": 262144,
                "hidden_size": 2816,
                "intermediate_size": 2112,
                "num_hidden_layers": 30,
                "num_attention_heads": 16,
                "num_key_value_heads": 8,
                "head_dim": 256,
                "global_head_dim": 512,
                "num_global_key_value_heads": 2,
                "attention_k_eq_v": True,
                "sliding_window": 1024,
                "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5,
                "enable_moe_block": True,
                "num_experts": 128,
                "top_k_experts": 8,
                "moe_intermediate_size": 704,
                "max_position_embeddings": 262144,
            },
            "eos_token_id": [1, 106],
        }
    )


def test_26b_kv_bytes_at_full_context_is_about_5_2_gib():
    cfg = gemma4_26b_config()
    rep = kv_cache_report(cfg, 262_144, block_size=16, dtype_bytes=2)
    # 5 full layers x 2 heads x 512 x (K,V) x 2 B = 20,480 B/token, unbounded.
    assert rep[FULL] == 20_480 * 262_144 == 5 * GIB
    # 25 sliding layers x 8 x 256 x 2 x 2 B = 204,800 B/token, window 1024 -> 65 blocks of 16.
    assert rep[SLIDING] == 65 * 16 * 204_800
    assert rep["total"] / GIB == pytest.approx(5.2, abs=0.01)
    assert rep["naive"] / GIB == pytest.approx(55.0, abs=0.01)
    assert cfg.kv_bytes_for_tokens(262_144) / GIB == pytest.approx(5.19, abs=0.01)


def test_derive_num_blocks_splits_budget_by_kind():
    cfg = gemma4_26b_config()
    specs = cfg.attention_kinds()
    nb = derive_num_blocks(specs, 16, 2, 20 * GIB, 262_144, 4, 8192)
    # sliding pool capped at 4 windows (+2 blocks each) plus one step's tokens
    assert nb[SLIDING] == (4 * (1024 + 32) + 8192) // 16
    used = nb[SLIDING] * 16 * 204_800 + nb[FULL] * 16 * 20_480
    assert used <= 20 * GIB
    assert 20 * GIB - used < 16 * 20_480 * 2  # the rest of the budget went to the full pool


def _specs(window=8):
    return [
        AttentionKindSpec(SLIDING, (0,), 1, 2, window),
        AttentionKindSpec(FULL, (1,), 1, 2, None),
    ]


def _req(tokens, rid="r"):
    return Request(rid, tokens, SamplingParams(), {1})


def _run_prefill(kv, req, chunk):
    """Drive the manager like the scheduler does, without a model."""
    if not req.block_tables:
        kv.acquire_prefix(req)
    while req.num_remaining > 0:
        n = min(chunk, req.num_remaining)
        assert kv.allocate_slots(req, n)
        req.num_computed_tokens += n
        kv.publish_full_blocks(req)


def test_sliding_blocks_released_out_of_window_keep_logical_index():
    kv = KVCacheManager(_specs(window=8), {SLIDING: 16, FULL: 16}, 4)
    req = _req(list(range(2, 22)))  # 20 tokens
    _run_prefill(kv, req, chunk=4)
    # Release happens before the next allocation: next query at 20 reaches back to 13 -> block 3.
    assert kv.allocate_slots(req, 1)
    assert req.block_tables[SLIDING][:3] == [-1, -1, -1]
    assert all(b >= 0 for b in req.block_tables[SLIDING][3:])
    assert len(req.block_tables[SLIDING]) == len(req.block_tables[FULL]) == 6
    assert kv.pools[SLIDING].num_used == 3 and kv.pools[FULL].num_used == 6
    kv.free(req)
    assert kv.pools[SLIDING].num_free == 16 and kv.pools[FULL].num_free == 16


def test_prefix_reuse_refcounts_and_last_token_recomputed():
    kv = KVCacheManager(_specs(window=64), {SLIDING: 16, FULL: 16}, 4)
    a = _req(list(range(2, 12)), "a")  # 10 tokens -> 2 full blocks published
    _run_prefill(kv, a, chunk=16)
    b = _req(list(range(2, 11)) + [50, 51], "b")  # shares 9 tokens -> 2 blocks
    assert kv.acquire_prefix(b) == 8
    assert b.block_tables[FULL] == a.block_tables[FULL][:2]
    assert kv.pools[FULL].ref_counts[a.block_tables[FULL][0]] == 2
    c = _req(list(range(2, 10)), "c")  # exactly 8 tokens: the last one must be recomputed
    assert kv.acquire_prefix(c) == 4
    for r in (a, b, c):
        kv.free(r)
    assert kv.pools[FULL].num_free == 16 and kv.pools[SLIDING].num_free == 16
    # Freed blocks are still cached: a new request reuses them.
    d = _req(list(range(2, 12)), "d")
    assert kv.acquire_prefix(d) == 8
    kv.free(d)


def test_prefix_cache_eviction_and_disabled():
    kv = KVCacheManager(_specs(window=64), {SLIDING: 4, FULL: 4}, 4)
    a = _req(list(range(2, 11)), "a")
    _run_prefill(kv, a, chunk=16)
    kv.free(a)
    filler = _req(list(range(60, 76)), "f")  # 16 tokens take all 4 blocks -> evicts a's
    _run_prefill(kv, filler, chunk=16)
    kv.free(filler)
    again = _req(list(range(2, 11)), "a2")
    assert kv.acquire_prefix(again) == 0
    kv.free(again)
    off = KVCacheManager(_specs(), {SLIDING: 8, FULL: 8}, 4, enable_prefix_caching=False)
    x = _req(list(range(2, 11)))
    _run_prefill(off, x, chunk=16)
    off.free(x)
    assert off.acquire_prefix(_req(list(range(2, 11)))) == 0
    assert off.pools[FULL].num_cached == 0


def test_prefix_reuse_limited_by_missing_sliding_window_block():
    kv = KVCacheManager(_specs(window=4), {SLIDING: 16, FULL: 16}, 4)
    tokens = list(range(2, 19))  # 17 tokens -> 4 full blocks published
    a = _req(tokens, "a")
    _run_prefill(kv, a, chunk=4)
    h = a.block_hashes
    assert h[1] == hash_block(h[0], tokens[4:8])
    kv.free(a)
    sliding = kv.pools[SLIDING]
    victim = sliding.lookup(h[3])
    assert victim is not None
    sliding.free_queue.move_to_end(victim, last=False)
    sliding.allocate()  # evicts exactly the sliding copy of block 3
    sliding.free(victim)
    b = _req(tokens, "b")
    # n=4 would need sliding block 3 (window of position 16); n=3 needs only block 2.
    assert kv.acquire_prefix(b) == 12
    assert b.block_tables[SLIDING][:2] == [-1, -1] and b.block_tables[SLIDING][2] >= 0
    assert len(b.block_tables[FULL]) == 3
    kv.free(b)


def test_max_tokens_per_seq():
    # 5 sliding blocks = 20 tokens hold window 8 + chunk 4 + 2 straddling blocks: full pool limits.
    kv = KVCacheManager(_specs(window=8), {SLIDING: 5, FULL: 10}, 4)
    assert kv.max_tokens_per_seq(chunk=4) == 40
    # Fewer: only sequences that fit the sliding pool whole are safe.
    kv2 = KVCacheManager(_specs(window=8), {SLIDING: 3, FULL: 10}, 4)
    assert kv2.max_tokens_per_seq(chunk=4) == 12
