"""One attention kind's pool of KV blocks: reference counts, LRU free queue and prefix-hash map."""

from __future__ import annotations

from collections import OrderedDict


class BlockPool:
    """Hands out block ids 0..num_blocks-1 of one attention kind.

    Invariants: a block is either in use (ref_count > 0, not in the free queue) or free
    (ref_count == 0, in the free queue). A free block may still carry a content hash: it stays
    findable by `lookup` until `allocate` evicts it, and the free queue is least-recently-freed
    first, so eviction is LRU.
    """

    def __init__(self, num_blocks: int, kind: str = ""):
        if num_blocks <= 0:
            raise ValueError("a block pool needs at least one block")
        self.kind = kind
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.hash_to_block: dict[bytes, int] = {}
        # OrderedDict as an O(1) removable LRU queue; values unused.
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.num_evictions = 0

    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached(self) -> int:
        return len(self.hash_to_block)

    def allocate(self) -> int:
        """Take the least recently freed block, evicting its cached content if it had any."""
        if not self.free_queue:
            raise RuntimeError(f"{self.kind} block pool is exhausted")
        block, _ = self.free_queue.popitem(last=False)
        self._uncache(block)
        self.ref_counts[block] = 1
        return block

    def free(self, block: int) -> None:
        """Drop one reference; at zero the block joins the tail of the free queue (kept cached)."""
        if self.ref_counts[block] <= 0:
            raise RuntimeError(f"double free of {self.kind} block {block}")
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_queue[block] = None

    def lookup(self, block_hash: bytes) -> int | None:
        """The block holding this content, or None; does not take a reference."""
        return self.hash_to_block.get(block_hash)

    def acquire(self, block: int) -> None:
        """Take a reference on a (cached) block, reviving it from the free queue if needed."""
        if self.ref_counts[block] == 0:
            del self.free_queue[block]
        self.ref_counts[block] += 1

    def cache(self, block: int, block_hash: bytes) -> None:
        """Publish a fully computed block under its content hash. A hash already served by
        another block keeps its first owner (both hold identical KV)."""
        if self.block_hash[block] is not None or block_hash in self.hash_to_block:
            return
        self.block_hash[block] = block_hash
        self.hash_to_block[block_hash] = block

    def _uncache(self, block: int) -> None:
        h = self.block_hash[block]
        if h is not None:
            self.block_hash[block] = None
            if self.hash_to_block.get(h) == block:
                del self.hash_to_block[h]
            self.num_evictions += 1
