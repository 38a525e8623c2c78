"""Pydantic wire types of the OpenRouter-compatible API (requests only carry data; no torch)."""

from gemmaserve.protocol.chat import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionTool,
    JsonSchemaFormat,
    ReasoningConfig,
    ResponseFormat,
)
from gemmaserve.protocol.completions import CompletionRequest

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "FunctionTool",
    "JsonSchemaFormat",
    "ReasoningConfig",
    "ResponseFormat",
]
