"""Request fields shared by /chat/completions and /completions: sampling, routing, extensions."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from gemmaserve.protocol.body_checks import CheckedBody, FieldError, check_float32

# OpenRouter ignores top-level fields it does not know (spec §2.1), so every request model does too.
WIRE_CONFIG = ConfigDict(extra="ignore", populate_by_name=True)

# Plugins this endpoint honours: context-compression (middle-out) drops the middle of a prompt that
# is over the context; response-healing needs nothing, since structured output is grammar-enforced
# and the JSON it would repair is never malformed.
HONOURED_PLUGINS = frozenset({"response-healing", "context-compression"})



def Number(**bounds: float) -> Any:
    """A JSON number (never a boolean or a numeric string) held to `bounds` and to float32, the
    precision the sampler uses it in (body_checks.check_float32)."""
    return Annotated[float, Field(strict=True, **bounds), AfterValidator(check_float32)]


def Integer(**bounds: int) -> Any:
    """A JSON integer: `true` is not 1, `2.0` and "2" are not 2."""
    return Annotated[int, Field(strict=True, **bounds)]


# repetition_penalty divides the soft-capped logits (|x| <= 30) in float32: below this the quotient
# overflows to inf and the row's softmax is NaN.
MIN_DIVISOR = 1e-30


def _divisor(value: float) -> float:
    if value < MIN_DIVISOR:
        raise ValueError(f"must be at least {MIN_DIVISOR:g}: it divides logits in float32, where a smaller "
                         "value overflows")
    return value


Probability = Number(ge=0.0, le=1.0)
Penalty = Number(ge=-2.0, le=2.0)


class SamplingFields(CheckedBody):
    """Sampling and length fields with OpenRouter's documented ranges (spec §2.1)."""

    model_config = WIRE_CONFIG

    model: str | None = None
    models: list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None  # no effect: usage is always streamed
    max_tokens: Integer(ge=1) | None = None
    max_completion_tokens: Integer(ge=1) | None = None
    temperature: Number(ge=0.0, le=2.0) | None = None
    top_p: Number(gt=0.0, le=1.0) | None = None  # 0 would keep no token: OpenRouter's range is (0, 1]
    top_k: Integer(ge=0) | None = None
    min_p: Probability | None = None
    top_a: Probability | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    repetition_penalty: Annotated[Number(gt=0.0, le=2.0), AfterValidator(_divisor)] | None = None
    # torch.Generator.manual_seed takes [-2**63, 2**64 - 1]; past that a seed cannot be honoured.
    seed: Integer(ge=-(2**63), le=2**64 - 1) | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, Number(ge=-100.0, le=100.0)] | None = None
    n: int | None = None  # ignored: OpenRouter always returns exactly one choice
    user: str | None = None
    session_id: Annotated[str, Field(max_length=256)] | None = None
    provider: dict[str, Any] | None = None
    # OpenRouter features this server cannot provide are refused rather than silently dropped.
    plugins: list[dict[str, Any]] | None = None
    transforms: list[str] | None = None  # legacy spelling of the context-compression plugin
    web_search_options: dict[str, Any] | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = None
    # Extensions (vLLM-style) for benchmarks and tests.
    ignore_eos: bool = False
    min_tokens: Integer(ge=0) = 0

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if (isinstance(v, str) and not v) or (isinstance(v, list) and any(not s for s in v)):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @field_validator("plugins")
    @classmethod
    def _known_plugins(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for item in v or []:
            pid = item.get("id")
            if not isinstance(pid, str):
                raise ValueError("each plugin needs a string 'id'")
            if item.get("enabled") is False:
                continue
            if pid not in HONOURED_PLUGINS:
                raise ValueError(f"the '{pid}' plugin is not available on this endpoint")
            if pid == "context-compression" and item.get("engine", "middle-out") != "middle-out":
                raise ValueError(f"context-compression engine {item.get('engine')!r} is not available "
                                 "(only 'middle-out')")
        return v

    @field_validator("transforms")
    @classmethod
    def _known_transforms(cls, v: list[str] | None) -> list[str] | None:
        unknown = [t for t in v or [] if t != "middle-out"]
        if unknown:
            raise ValueError(f"transforms {unknown} are not available on this endpoint (only 'middle-out')")
        return v

    @field_validator("web_search_options")
    @classmethod
    def _no_web_search(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            raise ValueError("web search is not available on this endpoint")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and len(v) > 16:
            raise ValueError(f"at most 16 metadata pairs are allowed, got {len(v)}")
        return v

    @model_validator(mode="after")
    def _lengths_agree(self) -> "SamplingFields":
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            if self.max_tokens != self.max_completion_tokens:
                raise FieldError("max_completion_tokens",
                                 "max_tokens and max_completion_tokens disagree; send one of them")
        return self

    @property
    def middle_out(self) -> bool:
        """Whether a prompt over the context is to be compressed rather than refused."""
        if self.transforms and "middle-out" in self.transforms:
            return True
        return any(p.get("id") == "context-compression" and p.get("enabled") is not False
                   for p in self.plugins or [])

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)
