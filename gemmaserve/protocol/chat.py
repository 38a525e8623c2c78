"""Wire types of POST /chat/completions: messages, content parts, tools, reasoning, response_format."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gemmaserve.protocol.body_checks import check_json_text_depth
from gemmaserve.protocol.common import WIRE_CONFIG, FieldError, Integer, SamplingFields

FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImageUrl(_Part):
    url: str
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(_Part):
    data: str
    format: str


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class VideoUrl(_Part):
    url: str


class VideoPart(_Part):
    type: Literal["video_url", "input_video"]
    video_url: VideoUrl | None = None
    input_video: VideoUrl | None = None  # the deprecated alias may name its own field

    @model_validator(mode="after")
    def _has_url(self) -> "VideoPart":
        if self.video_url is None and self.input_video is None:
            raise ValueError("a video part needs video_url.url")
        return self

    @property
    def url(self) -> str:
        return (self.video_url or self.input_video).url  # type: ignore[union-attr]


class FilePart(_Part):
    type: Literal["file"]
    file: dict[str, Any]


ContentPart = Annotated[
    Union[TextPart, ImagePart, AudioPart, VideoPart, FilePart], Field(discriminator="type")
]


class FunctionCall(_Part):
    name: str
    arguments: str  # a JSON string, as OpenAI sends it

    @field_validator("arguments")
    @classmethod
    def _bounded_depth(cls, v: str) -> str:
        check_json_text_depth(v)  # the template renders the parsed value recursively
        return v


class ToolCall(_Part):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None


class SystemMessage(_Message):
    role: Literal["system", "developer"]
    content: str | list[TextPart]


class UserMessage(_Message):
    role: Literal["user"]
    content: str | list[ContentPart]


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None  # input alias used by DeepSeek/vLLM clients
    # Never validated item by item: unknown detail types and formats must round-trip without a 400.
    reasoning_details: list[dict[str, Any]] | None = None


class ToolMessage(_Message):
    role: Literal["tool"]
    content: str | list[ContentPart]
    tool_call_id: str


ChatMessage = Annotated[
    Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage], Field(discriminator="role")
]


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: dict[Literal["name"], FunctionName]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: FunctionName
    description: str | None = None
    # "schema" shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema", "grammar", "python"]
    json_schema: JsonSchemaFormat | None = None
    grammar: str | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is json_schema")
        if self.type == "grammar" and not (self.grammar or "").strip():
            raise ValueError("response_format.grammar (GBNF or Lark text) is required when type is grammar")
        return self


Effort = Literal["max", "xhigh", "high", "medium", "low", "minimal", "none"]


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    effort: Effort | None = None
    max_tokens: Integer(ge=0) | None = None
    exclude: bool = False
    enabled: bool | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ChatCompletionRequest(SamplingFields):
    """Body of POST /chat/completions (spec §2.1); unknown fields are ignored."""

    model_config = WIRE_CONFIG

    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    prompt: str | None = None
    logprobs: bool | None = None
    top_logprobs: Integer(ge=0, le=20) | None = None
    response_format: ResponseFormat | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningConfig | None = None
    reasoning_effort: Effort | None = None
    include_reasoning: bool | None = None
    modalities: list[str] | None = None  # output modalities; Gemma writes text only
    debug: dict[str, Any] | None = None  # {echo_upstream_body: bool}, streaming only (spec §4.6)
    # vLLM's per-request processor options: {"max_soft_tokens": 70|140|280|560|1120 (images),
    # "video_max_soft_tokens": ..., "num_frames": n, "fps": f} (README "Images and video").
    mm_processor_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.messages is None and self.prompt is None:
            raise FieldError("messages", "either messages or prompt is required")
        if self.top_logprobs is not None and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs requires logprobs: true")
        if (
            self.reasoning is not None
            and self.reasoning.effort is not None
            and self.reasoning_effort is not None
            and self.reasoning.effort != self.reasoning_effort
        ):
            raise FieldError("reasoning_effort", "reasoning.effort and reasoning_effort disagree; send one of them")
        return self
