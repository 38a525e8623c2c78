"""Wire types of POST /responses (OpenAI Responses, stateless as OpenRouter serves it; platform spec §2)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from gemmaserve.protocol.chat import Effort, FunctionName
from gemmaserve.protocol.common import WIRE_CONFIG, FieldError, SamplingFields


class _Item(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- input content parts --------------------------------------------------------------------------


class InputText(_Item):
    type: Literal["input_text"]
    text: str


class OutputText(_Item):
    """Assistant text passed back from an earlier response."""

    type: Literal["output_text"]
    text: str


class Refusal(_Item):
    type: Literal["refusal"]
    refusal: str


class InputImage(_Item):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None  # needs the Files API, which a stateless server has not got
    detail: Literal["auto", "low", "high", "original"] | None = None


class InputFile(_Item):
    type: Literal["input_file"]


InputPart = Annotated[Union[InputText, OutputText, Refusal, InputImage, InputFile], Field(discriminator="type")]


# -- input items ----------------------------------------------------------------------------------


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart]


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: FunctionName
    arguments: str  # a JSON string, as the model produced it


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: str | list[InputPart]


class ReasoningText(_Item):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Item):
    """A reasoning item passed back; its text rides on the next assistant turn."""

    type: Literal["reasoning"]
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None


class ItemReference(_Item):
    type: Literal["item_reference"]
    id: str


def _item_kind(value: Any) -> str | None:
    # Messages may omit `type` (EasyInputMessage); everything else must name itself.
    if isinstance(value, dict):
        return value.get("type", "message" if "role" in value else None)
    return getattr(value, "type", None)


InputItem = Annotated[
    Union[
        Annotated[MessageItem, Tag("message")],
        Annotated[FunctionCallItem, Tag("function_call")],
        Annotated[FunctionCallOutputItem, Tag("function_call_output")],
        Annotated[ReasoningItem, Tag("reasoning")],
        Annotated[ItemReference, Tag("item_reference")],
    ],
    Discriminator(_item_kind),
]


# -- tools, reasoning, text format ----------------------------------------------------------------


# Tools the platform itself would run (OpenAI's hosted tools). This server has none of them: they
# are accepted and not offered to the model, as OpenRouter ignores what an endpoint does not support.
HOSTED_TOOLS = frozenset({"web_search", "web_search_preview", "file_search", "code_interpreter",
                          "image_generation", "computer_use_preview", "computer_use", "mcp", "local_shell",
                          "custom", "tool_search"})


class ResponsesTool(_Item):
    """A flat function tool ({type: function, name, parameters}), a `namespace` grouping function
    tools (Codex sends them), or a hosted tool type (accepted, not offered); any other type is a 400."""

    type: str
    name: FunctionName | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list["ResponsesTool"] | None = None  # a namespace's members

    @model_validator(mode="after")
    def _known_type(self) -> "ResponsesTool":
        if self.type not in ("function", "namespace") and self.type not in HOSTED_TOOLS:
            raise FieldError("type", f"tool type '{self.type}' is not available on this endpoint")
        if self.type in ("function", "namespace") and self.name is None:
            raise FieldError("name", f"a {self.type} tool needs a 'name'")
        if self.type == "namespace" and any(t.type != "function" for t in self.tools or []):
            raise FieldError("tools", "a namespace holds function tools only")
        return self


class NamedFunctionChoice(_Item):
    type: Literal["function"]
    name: FunctionName


class ResponsesReasoning(_Item):
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    enabled: bool | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None


class TextFormat(_Item):
    type: Literal["text", "json_object", "json_schema"]
    name: FunctionName | None = None
    description: str | None = None
    # "schema" shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> "TextFormat":
        if self.type == "json_schema" and (self.name is None or self.json_schema is None):
            raise FieldError("schema" if self.name else "name", "json_schema format needs 'name' and 'schema'")
        return self


class TextConfig(_Item):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(SamplingFields):
    """Body of POST /responses; the chat sampling extensions (min_p, penalties, seed...) ride along."""

    model_config = WIRE_CONFIG

    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ResponsesReasoning | None = None
    text: TextConfig | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None

    @model_validator(mode="after")
    def _stateless(self) -> "ResponsesRequest":
        # OpenRouter keeps no responses: nothing to store and nothing to continue from.
        if self.store is True:
            raise FieldError("store", "store: true is not supported: this endpoint is stateless; send the "
                             "whole conversation as input items")
        if self.previous_response_id is not None:
            raise FieldError("previous_response_id", "previous_response_id is not supported: this endpoint is "
                             "stateless; send the whole conversation as input items")
        if self.background:
            raise FieldError("background", "background responses are not supported: this endpoint is stateless")
        if self.max_tokens is not None and self.max_output_tokens is not None \
                and self.max_tokens != self.max_output_tokens:
            raise FieldError("max_output_tokens", "max_tokens and max_output_tokens disagree; send one of them")
        return self
