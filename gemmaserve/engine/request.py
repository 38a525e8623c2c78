"""Per-request engine state: tokens, progress through the KV cache, block tables, and status."""

from __future__ import annotations

import enum
from typing import Any

from gemmaserve.types import FinishReason, SamplingParams, TokenLogprob


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued, holds no blocks (new, or preempted and to be recomputed)
    RUNNING = "running"  # holds blocks; prefilling or decoding
    FINISHED = "finished"  # blocks freed; finish_reason says why


class Request:
    """State machine WAITING -> RUNNING -> FINISHED, with RUNNING -> WAITING on preemption.

    `num_computed_tokens` counts leading tokens of `all_token_ids` whose K/V are in the cache.
    A step computes the next chunk; when it reaches the end of `all_token_ids` the request samples.
    After preemption it drops to 0 and prompt + generated tokens are prefilled again.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        eos_token_ids: set[int],
        sampling_state: Any = None,
        detokenizer: Any = None,
        arrival: int = 0,
    ):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.all_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.stop_ids = set(params.stop_token_ids) | set(eos_token_ids)
        self.sampling_state = sampling_state
        self.detokenizer = detokenizer
        self.arrival = arrival
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prefix-cache hit on first admission
        self.admitted = False  # has been scheduled at least once (num_cached_tokens is final)
        self.num_preemptions = 0
        # Per attention kind: logical block index -> block id (-1 = released out of the window).
        self.block_tables: dict[str, list[int]] = {}
        # Content hash of each full block of all_token_ids, in order (chained: see kv_cache).
        self.block_hashes: list[bytes] = []
        self.num_published_blocks = 0  # leading blocks already registered in the prefix cache
        self.finish_reason: FinishReason | None = None
        self.stop_reason: int | str | None = None
        self.error: str | None = None
        self.text = ""
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        # Filled by position as prefill chunks are computed (a recompute after preemption rewrites the same entries).
        self.prompt_logprobs: list[TokenLogprob | None] | None = (
            [None] * len(self.prompt_token_ids) if params.prompt_logprobs is not None else None
        )
        # Index into output_token_ids/logprobs of what the last RequestOutput already reported.
        self.num_reported_tokens = 0
        # Media (engine.multimodal): the processed inputs, their soft-token runs in the prompt (sorted,
        # disjoint) and whether each run's embeddings are in the encoder cache (pinned for this request).
        self.media: list[Any] = []
        self.mm_spans: list[Any] = []
        self.mm_ready: list[bool] = []

    @property
    def scores_only(self) -> bool:
        """max_tokens=0 (with prompt_logprobs): the prompt is computed and scored, nothing sampled."""
        return self.params.max_tokens == 0

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_remaining(self) -> int:
        """Tokens whose K/V still have to be computed before the request can sample."""
        return len(self.all_token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def clip_chunk(self, n: int, room: int) -> int:
        """Tokens the next chunk may take, given a proposed `n` and `room` left in the step: never ends
        inside a media span (its bidirectional block must be computed in one forward pass), never
        reaches a span whose embeddings are not ready; a span at the chunk's start that is longer
        than `n` is taken whole when it fits `room` (else 0: it waits for a roomier step)."""
        start = self.num_computed_tokens
        end = start + n
        for i, span in enumerate(self.mm_spans):
            if span.end <= start:
                continue
            if span.start >= end:
                break
            if not self.mm_ready[i]:
                return max(0, span.start - start)
            if span.end > end:
                if span.start > start:
                    return span.start - start
                return span.end - start if span.end - start <= room else 0
        return n

    def splits_span(self, pos: int) -> bool:
        """Whether a chunk boundary at `pos` would fall strictly inside a media span."""
        return any(span.start < pos < span.end for span in self.mm_spans)

    def media_hash(self, lo: int, hi: int) -> bytes:
        """Keys of the media spans overlapping positions [lo, hi): the prefix cache mixes them into
        block hashes (equal token ids with other pixels are another prefix)."""
        return b"".join(span.key for span in self.mm_spans if span.start < hi and span.end > lo)

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def finish(self, reason: FinishReason, stop_reason: int | str | None = None, error: str | None = None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason
        self.error = error

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.value}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens})"
        )
