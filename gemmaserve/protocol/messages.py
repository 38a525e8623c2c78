"""Wire types of POST /messages (Anthropic Messages, as OpenRouter serves it; platform spec §3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gemmaserve.protocol.chat import FunctionName
from gemmaserve.protocol.body_checks import CheckedBody
from gemmaserve.protocol.common import WIRE_CONFIG, FieldError


class _Block(BaseModel):
    # cache_control, citations and other annotations are accepted and have no effect here.
    model_config = ConfigDict(extra="allow")


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class Base64Source(_Block):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Block):
    type: Literal["url"]
    url: str


class ImageBlock(_Block):
    type: Literal["image"]
    source: Annotated[Union[Base64Source, UrlSource], Field(discriminator="type")]


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1)]
    name: FunctionName
    input: dict[str, Any]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1)]
    content: str | list[Annotated[Union[TextBlock, ImageBlock], Field(discriminator="type")]] = ""
    is_error: bool | None = None


class ThinkingBlock(_Block):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Block):
    type: Literal["redacted_thinking"]
    data: str


class DocumentBlock(_Block):
    type: Literal["document"]


ContentBlock = Annotated[
    Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock, DocumentBlock],
    Field(discriminator="type"),
]


class Message(_Block):
    # "system" mid-conversation: Claude Code sends it (its mid-conversation-system beta).
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(_Block):
    """A client tool ({name, description, input_schema}); Anthropic's server tools carry a dated
    `type` (web_search_20250305, bash_...) and are refused by name."""

    type: str | None = None
    name: FunctionName
    description: str | None = None
    input_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _client_tool(self) -> "Tool":
        if self.type not in (None, "custom"):
            raise FieldError("type", f"tool type '{self.type}' is not available on this endpoint "
                             "(only client tools with an input_schema)")
        if self.input_schema is None:
            raise FieldError("input_schema", "a tool needs an 'input_schema'")
        return self


class ToolChoice(_Block):
    type: Literal["auto", "any", "tool", "none"]
    name: FunctionName | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> "ToolChoice":
        if self.type == "tool" and self.name is None:
            raise FieldError("name", "tool_choice type 'tool' needs a 'name'")
        return self


class Thinking(_Block):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _budget(self) -> "Thinking":
        if self.type == "enabled" and self.budget_tokens is None:
            raise FieldError("budget_tokens", "thinking type 'enabled' needs 'budget_tokens'")
        return self


class JsonOutputFormat(_Block):
    type: Literal["json_schema"]
    # "schema" shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Block):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JsonOutputFormat | None = None


class Metadata(_Block):
    user_id: Annotated[str, Field(max_length=512)] | None = None


class MessagesBody(CheckedBody):
    """What /messages and /messages/count_tokens share."""

    model_config = WIRE_CONFIG

    model: str | None = None
    models: list[str] | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    provider: dict[str, Any] | None = None
    session_id: Annotated[str, Field(max_length=256)] | None = None


class CountTokensRequest(MessagesBody):
    """Body of POST /messages/count_tokens."""


class MessagesRequest(MessagesBody):
    """Body of POST /messages; unknown fields are ignored as on every OpenRouter surface."""

    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: Metadata | None = None
    stream: bool = False
    # OpenRouter's sampling extensions, passed to the chat request as they are.
    seed: int | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None

    @model_validator(mode="after")
    def _stops(self) -> "MessagesRequest":
        # The engine watches at most four stop strings per request, as chat's `stop` does.
        if self.stop_sequences is not None and len(self.stop_sequences) > 4:
            raise FieldError("stop_sequences", "at most 4 stop sequences are supported")
        return self
