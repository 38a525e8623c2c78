"""Wire types of the legacy POST /completions (raw prompt in, text_completion out; spec §10)."""

from __future__ import annotations


from pydantic import Field, field_validator, model_validator

from gemmaserve.protocol.chat import ResponseFormat
from gemmaserve.protocol.common import WIRE_CONFIG, Integer, SamplingFields


class CompletionRequest(SamplingFields):
    """Body of POST /completions. One prompt per request: a string or a token-id array."""

    model_config = WIRE_CONFIG

    prompt: str | list[Integer(ge=0)] | list[str] | list[list[Integer(ge=0)]]
    logprobs: Integer(ge=0, le=5) | None = None
    echo: bool = False
    # 0 is allowed with echo: score the prompt (its logprobs), generate nothing (lm-eval's loglikelihood).
    max_tokens: Integer(ge=0) | None = None
    suffix: str | None = None  # fill-in-the-middle: Gemma 4 has no FIM format, so only "" or null
    best_of: Integer(ge=1, le=20) | None = None  # one candidate only: 1 or null
    response_format: ResponseFormat | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this model")
        return v

    @model_validator(mode="after")
    def _zero_needs_echo(self) -> "CompletionRequest":
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 needs echo (it returns only the prompt and its logprobs)")
        return self

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, v: int | None) -> int | None:
        if v is not None and v > 1:
            raise ValueError("best_of > 1 is not supported: this endpoint generates one candidate")
        return v

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, v):
        # A batch of prompts would need several choices; OpenRouter returns exactly one.
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            v = v[0]
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and any(t < 0 for t in v):
            raise ValueError("token ids must be non-negative")
        return v
