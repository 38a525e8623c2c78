"""Paged KV cache manager: per-kind block pools, block tables, sliding-window release, prefix caching.

Prefix-cache rule for hybrid (sliding + full) models: a prompt reuses its first n full blocks
when (a) every full-attention pool still holds blocks 0..n-1 and (b) every sliding pool still
holds the blocks that the first recomputed token's window reaches back into
([n*B - window + 1, n*B)). n is the largest value meeting both, and n*B <= prompt_len - 1 so the
last prompt token is always recomputed (its logits are sampled). Sliding blocks further back than
the window are not needed and their table entries are -1.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import Sequence

from gemmaserve.config import cdiv
from gemmaserve.engine.block_pool import BlockPool
from gemmaserve.engine.request import Request
from gemmaserve.model.config import AttentionKindSpec, Gemma4TextConfig


def hash_block(parent: bytes, token_ids: Sequence[int], media: bytes = b"") -> bytes:
    """Chained content hash: equal hashes mean equal tokens (and, for media soft tokens, equal media
    content and budget via `media`, the keys of the spans in the block) at equal positions from the start."""
    return hashlib.sha256(parent + array("q", token_ids).tobytes() + media).digest()


def kind_bytes_per_token(spec: AttentionKindSpec, dtype_bytes: int) -> int:
    # K and V stored separately for every layer of the kind.
    return len(spec.layers) * spec.num_kv_heads * spec.head_dim * 2 * dtype_bytes


def sliding_blocks_per_seq(window: int, block_size: int) -> int:
    """Blocks a decoding sequence holds in a sliding pool: the window may straddle one extra block."""
    return cdiv(window, block_size) + 1


def kv_cache_report(
    config: Gemma4TextConfig, num_tokens: int, block_size: int = 16, dtype_bytes: int = 2
) -> dict[str, int]:
    """Paged KV bytes one sequence of `num_tokens` holds, per kind and in total, next to the naive
    figure that keeps every layer's K/V for every token."""
    report: dict[str, int] = {}
    total = naive = 0
    for spec in config.attention_kinds():
        blocks = cdiv(num_tokens, block_size)
        if spec.window is not None:
            blocks = min(blocks, sliding_blocks_per_seq(spec.window, block_size))
        nbytes = blocks * block_size * kind_bytes_per_token(spec, dtype_bytes)
        report[spec.kind] = nbytes
        total += nbytes
        naive += num_tokens * kind_bytes_per_token(spec, dtype_bytes)
    report["total"] = total
    report["naive"] = naive
    return report


def derive_num_blocks(
    specs: list[AttentionKindSpec],
    block_size: int,
    dtype_bytes: int,
    memory_bytes: int,
    max_model_len: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
) -> dict[str, int]:
    """Split a byte budget over the kinds' pools. Full pools get T tokens; a sliding pool gets
    min(T, what max_num_seqs sequences can hold at once: their windows plus one step's new tokens).
    T is the largest that fits the budget, capped at max_num_seqs full-length sequences."""

    def tokens_for(spec: AttentionKindSpec, t: int) -> int:
        if spec.window is None:
            return t
        cap = max_num_seqs * (spec.window + 2 * block_size) + max_num_batched_tokens
        return min(t, cap)

    def cost(t: int) -> int:
        return sum(
            cdiv(tokens_for(s, t), block_size) * block_size * kind_bytes_per_token(s, dtype_bytes)
            for s in specs
        )

    lo, hi = 0, max_num_seqs * (max_model_len + block_size)
    while lo < hi:  # largest t with cost(t) <= budget
        mid = (lo + hi + 1) // 2
        if cost(mid) <= memory_bytes:
            lo = mid
        else:
            hi = mid - 1
    return {s.kind: max(1, tokens_for(s, lo) // block_size) for s in specs}


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0
    hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class KVCacheManager:
    """Owns one BlockPool per attention kind and edits requests' block tables."""

    def __init__(
        self,
        specs: list[AttentionKindSpec],
        num_blocks: dict[str, int],
        block_size: int,
        enable_prefix_caching: bool = True,
    ):
        self.specs = {s.kind: s for s in specs}
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pools = {s.kind: BlockPool(num_blocks[s.kind], s.kind) for s in specs}
        self.stats = PrefixCacheStats()

    # -- capacity ---------------------------------------------------------------------------
    def max_tokens_per_seq(self, chunk: int) -> int:
        """Longest sequence the pools can hold alone (prefilled in chunks of `chunk`)."""
        best = None
        for kind, spec in self.specs.items():
            blocks = self.pools[kind].num_blocks
            if spec.window is None:
                cap = blocks * self.block_size
            elif blocks * self.block_size >= spec.window + chunk + 2 * self.block_size:
                cap = None  # window plus one chunk always fits: never limits a lone sequence
            else:
                cap = blocks * self.block_size  # safe only if the whole sequence fits
            if cap is not None:
                best = cap if best is None else min(best, cap)
        return best if best is not None else 1 << 62

    @property
    def usage(self) -> float:
        used = sum(p.num_used for p in self.pools.values())
        return used / sum(p.num_blocks for p in self.pools.values())

    # -- prefix cache -----------------------------------------------------------------------
    def _compute_hashes(self, req: Request, upto_block: int) -> None:
        bs = self.block_size
        hashes = req.block_hashes
        while len(hashes) < upto_block:
            i = len(hashes)
            parent = hashes[-1] if hashes else b""
            media = req.media_hash(i * bs, (i + 1) * bs) if req.mm_spans else b""
            hashes.append(hash_block(parent, req.all_token_ids[i * bs : (i + 1) * bs], media))

    def _first_needed_block(self, kind: str, first_pos: int) -> int:
        """Logical block holding the oldest key that a query at `first_pos` (or later) reads."""
        window = self.specs[kind].window
        if window is None:
            return 0
        return max(0, first_pos - window + 1) // self.block_size

    def acquire_prefix(self, req: Request) -> int:
        """On first scheduling of a request with no blocks: reuse cached leading blocks, set its
        tables and num_computed_tokens, and return the number of reused tokens."""
        assert not req.block_tables and req.num_computed_tokens == 0
        req.block_tables = {k: [] for k in self.pools}
        req.num_published_blocks = 0
        if not self.enable_prefix_caching or req.params.prompt_logprobs is not None:
            return 0  # prompt logprobs need the logits of every prompt position
        bs = self.block_size
        max_blocks = (req.num_tokens - 1) // bs
        self._compute_hashes(req, max_blocks)
        hashes = req.block_hashes
        n = max_blocks
        for kind, spec in self.specs.items():  # full kinds need every block 0..n-1
            if spec.window is None:
                pool = self.pools[kind]
                i = 0
                while i < n and pool.lookup(hashes[i]) is not None:
                    i += 1
                n = i
        # A hit must not end inside an image's soft-token run: the rest of the run would be computed
        # without its first part in the same pass (the bidirectional block would be lost).
        while n > 0 and (req.splits_span(n * bs) or not self._sliding_present(hashes, n)):
            n -= 1
        if n == 0:
            return 0
        for kind, pool in self.pools.items():
            first = self._first_needed_block(kind, n * bs)
            table = [-1] * first
            for i in range(first, n):
                block = pool.lookup(hashes[i])
                assert block is not None
                pool.acquire(block)
                table.append(block)
            req.block_tables[kind] = table
        req.num_computed_tokens = n * bs
        req.num_published_blocks = n
        return n * bs

    def _sliding_present(self, hashes: list[bytes], n: int) -> bool:
        for kind, spec in self.specs.items():
            if spec.window is not None:
                pool = self.pools[kind]
                first = self._first_needed_block(kind, n * self.block_size)
                if any(pool.lookup(hashes[i]) is None for i in range(first, n)):
                    return False
        return True

    def publish_full_blocks(self, req: Request) -> None:
        """After a step: register every newly completed block under its content hash."""
        if not self.enable_prefix_caching:
            return
        n_full = req.num_computed_tokens // self.block_size
        if n_full <= req.num_published_blocks:
            return
        self._compute_hashes(req, n_full)
        for kind, pool in self.pools.items():
            table = req.block_tables[kind]
            for i in range(req.num_published_blocks, min(n_full, len(table))):
                if table[i] >= 0:
                    pool.cache(table[i], req.block_hashes[i])
        req.num_published_blocks = n_full

    # -- allocation -------------------------------------------------------------------------
    def release_out_of_window(self, req: Request) -> None:
        """Free sliding blocks no future query of this request can reach (entry becomes -1)."""
        for kind, spec in self.specs.items():
            if spec.window is None:
                continue
            table, pool = req.block_tables[kind], self.pools[kind]
            first = min(self._first_needed_block(kind, req.num_computed_tokens), len(table))
            for i in range(first - 1, -1, -1):
                if table[i] < 0:
                    break  # everything before was released earlier
                pool.free(table[i])
                table[i] = -1

    def allocate_slots(self, req: Request, num_new_tokens: int) -> bool:
        """Give the request blocks for its next `num_new_tokens` tokens; all or nothing."""
        self.release_out_of_window(req)
        target = cdiv(req.num_computed_tokens + num_new_tokens, self.block_size)
        need = {k: target - len(req.block_tables[k]) for k in self.pools}
        if any(n > self.pools[k].num_free for k, n in need.items()):
            return False
        for kind, n in need.items():
            pool, table = self.pools[kind], req.block_tables[kind]
            for _ in range(n):
                table.append(pool.allocate())
        return True

    def free(self, req: Request) -> None:
        """Return every block of the request. Tail blocks are freed first so that, in the LRU
        free queue, a shared prefix outlives the tails hanging off it."""
        for kind, table in req.block_tables.items():
            pool = self.pools[kind]
            for block in reversed(table):
                if block >= 0:
                    pool.free(block)
        req.block_tables = {}
