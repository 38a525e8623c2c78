"""EncoderCache: LRU eviction under the byte bound, pinned entries never evicted, release on finish."""

import torch

from gemmaserve.engine.encoder_cache import EncoderCache


def t(n):  # n float32 rows of 4 -> 16 n bytes
    return torch.zeros(n, 4)


def test_lru_eviction_keeps_pinned_entries():
    c = EncoderCache(max_bytes=100)
    c.put(b"a", t(2), ["r1"])  # 32 bytes, pinned by r1
    c.put(b"b", t(2), [])  # 32
    c.put(b"c", t(2), [])  # 32 -> 96 <= 100
    assert len(c) == 3
    c.get(b"b")  # b is now the most recently used
    c.put(b"d", t(2), [])  # 128 > 100: the least recently used unpinned entry (c) goes
    assert b"c" not in c and all(k in c for k in (b"a", b"b", b"d"))
    assert c.nbytes == 96


def test_pins_allow_overflow_until_released():
    c = EncoderCache(max_bytes=40)
    c.put(b"a", t(2), ["r1"])
    c.put(b"b", t(2), ["r2"])  # 64 > 40, but both pinned
    assert len(c) == 2 and c.num_pinned == 2
    assert c.lookup(b"a", "r2") and c.pinned_by("r2") == {b"a", b"b"}
    c.release("r1")
    assert b"a" in c  # r2 still holds it
    c.release("r2")
    assert c.num_pinned == 0 and c.nbytes <= 40
    assert not c.lookup(b"zzz", "r3") and c.misses == 1 and c.hits == 1


def test_release_unknown_request_is_harmless():
    c = EncoderCache(max_bytes=0)
    c.release("nobody")
    c.put(b"x", t(1), [])
    assert len(c) == 0  # a zero bound keeps nothing unpinned
