"""BlockPool: reference counts, LRU free queue, prefix-hash cache and eviction."""

import pytest

from gemmaserve.engine.block_pool import BlockPool


def test_allocate_free_counts_and_double_free():
    pool = BlockPool(3, "full")
    blocks = [pool.allocate() for _ in range(3)]
    assert blocks == [0, 1, 2]
    assert pool.num_free == 0 and pool.num_used == 3
    with pytest.raises(RuntimeError, match="exhausted"):
        pool.allocate()
    for b in blocks:
        pool.free(b)
    assert pool.num_free == 3
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(0)


def test_freed_blocks_stay_cached_and_evict_lru():
    pool = BlockPool(2, "full")
    a, b = pool.allocate(), pool.allocate()
    pool.cache(a, b"ha")
    pool.cache(b, b"hb")
    pool.free(a)  # freed first -> evicted first
    pool.free(b)
    assert pool.lookup(b"ha") == a and pool.lookup(b"hb") == b
    got = pool.allocate()
    assert got == a
    assert pool.lookup(b"ha") is None and pool.lookup(b"hb") == b
    assert pool.num_evictions == 1


def test_acquire_revives_free_cached_block_and_counts_refs():
    pool = BlockPool(2, "sliding")
    a = pool.allocate()
    pool.cache(a, b"h")
    pool.free(a)
    assert pool.num_free == 2
    pool.acquire(a)
    pool.acquire(a)
    assert pool.ref_counts[a] == 2 and pool.num_free == 1
    pool.free(a)
    assert pool.num_free == 1  # one reference still held
    pool.free(a)
    assert pool.num_free == 2 and pool.lookup(b"h") == a


def test_duplicate_hash_keeps_first_owner():
    pool = BlockPool(2)
    a, b = pool.allocate(), pool.allocate()
    pool.cache(a, b"same")
    pool.cache(b, b"same")
    assert pool.lookup(b"same") == a
    assert pool.block_hash[b] is None
