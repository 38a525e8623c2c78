"""Request fields shared by /chat/completions and /completions: sampling, routing, extensions."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# OpenRouter ignores top-level fields it does not know (spec §2.1), so every request model does too.
WIRE_CONFIG = ConfigDict(extra="ignore", populate_by_name=True)

# Plugins this endpoint honours: context-compression (middle-out) drops the middle of a prompt that
# is over the context; response-healing needs nothing, since structured output is grammar-enforced
# and the JSON it would repair is never malformed.
HONOURED_PLUGINS = frozenset({"response-healing", "context-compression"})


class FieldError(ValueError):
    """A cross-field check that names the field to blame (the API reports it as `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(BaseModel):
    """Sampling and length fields with OpenRouter's documented ranges (spec §2.1)."""

    model_config = WIRE_CONFIG

    model: str | None = None
    models: list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None  # no effect: usage is always streamed
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Probability | None = None
    top_a: Probability | None = None  # accepted; no Gemma sampler implements it
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    # torch.Generator.manual_seed takes [-2**63, 2**64 - 1]; past that a seed cannot be honoured.
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
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
    min_tokens: Annotated[int, Field(ge=0)] = 0

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
