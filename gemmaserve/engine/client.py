"""The interface the API uses to reach the engine: submit a prompt, stream outputs, abort."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from gemmaserve.types import MediaInput, RequestOutput, SamplingParams


@dataclass
class EngineStats:
    """A snapshot for /metrics and /health."""

    num_running: int
    num_waiting: int
    kv_usage: float  # fraction of KV blocks in use, over all pools, 0..1
    num_preemptions: int
    prefix_cache_hit_rate: float


class EngineClient(Protocol):
    """Async front of the engine. `generate` yields one RequestOutput per step that produced
    something for the request, the last with finished=True. Closing the iterator early (client
    gone) aborts the request and frees its KV blocks. Raises QueueFullError when the waiting queue
    is full, PromptTooLongError when prompt + max_tokens cannot fit, InvalidRequestError for
    sampling values or token ids it cannot run (or media that does not match the prompt's soft-token
    runs, or media on a model without a vision tower), EngineDeadError when the loop is gone.
    `media` lists the processed images/videos in prompt order (media/ builds them)."""

    max_model_len: int
    vocab_size: int  # the model's logit width
    takes_media: bool  # the model has a vision tower: images and video are accepted

    def generate(
        self, prompt_token_ids: list[int], params: SamplingParams, request_id: str,
        media: list[MediaInput] | None = None,
    ) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    @property
    def is_ready(self) -> bool: ...

    async def shutdown(self) -> None: ...
