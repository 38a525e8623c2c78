"""Encoder cache: projected vision embeddings keyed by (media content hash, budget, frame), under a
byte bound, pinned by the requests that still need them."""

from __future__ import annotations

from collections import OrderedDict

import torch


class EncoderCache:
    """LRU over unpinned entries. An entry is pinned while any unfinished request holds it (it will be
    read by a later prefill chunk, or again after a preemption); pinned entries are never evicted, so
    the bound can be exceeded while pins last (it is then restored as they are released).

    Invariant: every key in `_pins` values is in `_entries`; `release(request_id)` on every exit path
    of a request leaves no pin behind."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._pins: dict[str, set[bytes]] = {}  # request id -> keys it holds
        self._refs: dict[bytes, int] = {}  # key -> number of requests holding it
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> torch.Tensor:
        """The embeddings [N, H] of a key that is present (pinned keys always are)."""
        self._entries.move_to_end(key)
        return self._entries[key]

    def lookup(self, key: bytes, request_id: str) -> bool:
        """True (and pinned for the request) when the key is cached."""
        if key not in self._entries:
            self.misses += 1
            return False
        self.hits += 1
        self.pin(key, request_id)
        self._entries.move_to_end(key)
        return True

    def put(self, key: bytes, value: torch.Tensor, request_ids: list[str]) -> None:
        """Store and pin for every listed request, then evict least recently used unpinned entries."""
        if key not in self._entries:
            self._entries[key] = value
            self.nbytes += value.numel() * value.element_size()
        for rid in request_ids:
            self.pin(key, rid)
        self._evict()

    def pin(self, key: bytes, request_id: str) -> None:
        held = self._pins.setdefault(request_id, set())
        if key not in held:
            held.add(key)
            self._refs[key] = self._refs.get(key, 0) + 1

    def release(self, request_id: str) -> None:
        """Drop every pin of a request (finished, aborted, failed)."""
        for key in self._pins.pop(request_id, ()):
            self._refs[key] -= 1
            if self._refs[key] == 0:
                del self._refs[key]
        self._evict()

    @property
    def num_pinned(self) -> int:
        return len(self._refs)

    def pinned_by(self, request_id: str) -> set[bytes]:
        return set(self._pins.get(request_id, ()))

    def _evict(self) -> None:
        for key in list(self._entries):
            if self.nbytes <= self.max_bytes:
                break
            if key in self._refs:
                continue
            value = self._entries.pop(key)
            self.nbytes -= value.numel() * value.element_size()
