"""Engine-side value types shared by every layer: sampling parameters, request outputs, errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch


class FinishReason(str, enum.Enum):
    """Why a request stopped. The API maps these onto OpenRouter's normalised reasons."""

    STOP = "stop"  # a stop token id or stop string matched
    LENGTH = "length"  # max_tokens reached, or the context is full
    ABORT = "abort"  # aborted by the client (disconnect, cancel)
    ERROR = "error"  # the engine failed this request


@runtime_checkable
class TokenConstraint(Protocol):
    """A per-request logits processor (grammar, tool-call syntax, thinking budget).

    The sampler calls `mask_logits` once per sampled token, before temperature, penalties and
    top-k/p, with the request's full list of generated ids so far (the constraint advances its own
    state over ids it has not seen yet; after preemption it is called again with the same ids, so it
    must be idempotent for a list it has already consumed). It edits `logits` in place, setting
    disallowed ids to -inf. `logits` is float32 of the model's vocab size, which may exceed the
    tokenizer's. Constraints run in the order given in SamplingParams.constraints.
    """

    def mask_logits(self, output_token_ids: Sequence[int], logits: torch.Tensor) -> None: ...


@dataclass
class SamplingParams:
    """How to sample one request. Defaults are the neutral values (no penalty, no truncation)."""

    max_tokens: int | None = 16  # None = up to the context limit
    min_tokens: int = 0  # stop ids/strings are suppressed until this many tokens were generated
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0
    # OpenRouter's top_a: after the constraints, ids with probability below top_a * p_max**2 are
    # dropped (0 = off). See Sampler.process.
    top_a: float = 0.0
    frequency_penalty: float = 0.0  # OpenAI semantics, over generated tokens
    presence_penalty: float = 0.0  # OpenAI semantics, over generated tokens
    repetition_penalty: float = 1.0  # CTRL/HF semantics, over prompt and generated tokens
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None  # own torch.Generator per request
    stop: list[str] = field(default_factory=list)  # stop strings; never emitted, even in part
    stop_token_ids: list[int] = field(default_factory=list)  # on top of the model's eos ids
    ignore_eos: bool = False  # benchmarks: do not stop on eos / stop ids
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None = no logprobs; k >= 0 = chosen token + k top alternatives (k <= 20)
    # Log-probabilities of the prompt's own tokens (each under the model given the tokens before it),
    # with k top alternatives: scoring and echo. Such a request skips the prefix cache (every position
    # is computed) and may set max_tokens=0 to generate nothing.
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = False  # the server keeps them: parsers need <|channel>, <|tool_call> ...
    constraints: list[TokenConstraint] = field(default_factory=list)
    # Scheduling class: 0 = interactive; larger = background work (batches) that runs only in steps
    # no more urgent request needs for its prefill, is admitted last and preempted first.
    priority: int = 0
    # Free-form tag the API can use to find its own bookkeeping; the engine never reads it.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TopLogprob:
    token_id: int
    token: str  # decoded text of this single token (special tokens kept)
    logprob: float
    # The token's raw bytes: a byte-fallback token <0xE2> is b"\xe2", while `token` shows U+FFFD.
    # None when the producer did not know them (the API then falls back to token.encode()).
    bytes: bytes | None = None


@dataclass
class TokenLogprob:
    """Log-probability of one generated token under the model's distribution (after soft-capping,
    before temperature/top-k/top-p), with its top alternatives."""

    token_id: int
    token: str
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)
    bytes: bytes | None = None  # as TopLogprob.bytes


@dataclass
class RequestOutput:
    """One update for one request. `new_*` fields are the delta since the previous update;
    `text`/`token_ids`/`logprobs` are cumulative. Text never ends inside a UTF-8 character nor
    inside a possible stop-string match (that text is held back until it is resolved)."""

    request_id: str
    prompt_token_ids: list[int]
    new_token_ids: list[int]
    new_text: str
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None  # cumulative; None when not requested
    new_logprobs: list[TokenLogprob] | None = None
    # One entry per prompt token, the first None (nothing precedes it); set once the whole prompt
    # is computed, on every later output; None when not requested.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finished: bool = False
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None  # the stop token id or stop string that matched
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    error: str | None = None  # set with FinishReason.ERROR


@dataclass(frozen=True, eq=False)
class MediaInput:
    """One processed image or video (media/ makes it): the valid patches the vision encoder reads,
    and how many soft tokens each frame takes in the prompt. The prompt holds, per frame, one run
    of exactly `tokens_per_frame` soft-token ids (image or video id by `kind`), in media order."""

    kind: str  # "image" or "video"
    pixel_values: torch.Tensor  # [F, P, 3*16*16] float32 in [0, 1] (F = 1 for an image)
    position_ids: torch.Tensor  # [F, P, 2] int64 patch (column, row)
    content_hash: bytes  # of the source bytes and every processing setting (budget, frame choice)
    timestamps: tuple[str, ...] = ()  # video: "mm:ss" of each frame

    @property
    def num_frames(self) -> int:
        return int(self.pixel_values.shape[0])

    @property
    def tokens_per_frame(self) -> int:
        return int(self.pixel_values.shape[1]) // 9  # 3x3 pooling

    @property
    def num_soft_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    def prompt_text(self) -> str:
        """What its <|image|> / <|video|> placeholder expands to (transformers' Gemma4Processor):
        "<|image>" + "<|image|>"*n + "<image|>" for an image; per video frame
        "mm:ss <|image>" + "<|video|>"*n + "<image|>", frames joined by single spaces."""
        n = self.tokens_per_frame
        if self.kind == "image":
            return "<|image>" + "<|image|>" * n + "<image|>"
        return " ".join(f"{t} <|image>" + "<|video|>" * n + "<image|>" for t in self.timestamps)


@dataclass(frozen=True)
class MultimodalPrompt:
    """A raw prompt with media for LLM.generate: `text` holds one "<|image|>" per image and one
    "<|video|>" per video of `media`, in order; each is expanded to its soft-token run (and a video's
    frame timestamps) before tokenization, as transformers' processor does."""

    text: str
    media: tuple[MediaInput, ...]


class EngineError(Exception):
    """Base for errors the engine reports to its callers (the API maps each to a status)."""


class PromptTooLongError(EngineError):
    def __init__(self, prompt_tokens: int, max_model_len: int, max_tokens: int | None = None):
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens
        super().__init__(
            f"This endpoint's maximum context length is {max_model_len} tokens. However, you requested "
            f"about {prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} of text input"
            + (f", {max_tokens} in the output" if max_tokens else "")
            + "). Please reduce the length of either one."
        )


class QueueFullError(EngineError):
    """Too many requests waiting: the API answers 429."""


class EngineDeadError(EngineError):
    """The engine loop stopped (crash or shutdown): the API answers 503."""


class InvalidRequestError(EngineError, ValueError):
    """A request the engine cannot run as given (bad sampling values, bad token ids): 400."""
