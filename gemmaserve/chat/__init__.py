"""Gemma 4 conversation format: prompt rendering, output parsing (reasoning, tool calls), thinking budget."""

from gemmaserve.chat.constraints import ThinkingBudget, count_reasoning_tokens
from gemmaserve.chat.parser import (
    ContentDelta,
    Event,
    OutputStreamParser,
    ParsedOutput,
    ParsedToolCall,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    collect_events,
    parse_output,
    prompt_ends_in_reasoning,
)
from gemmaserve.chat.prompt import ChatPrompt, PromptEncoder
from gemmaserve.chat.render import ChatFormatError, ChatRenderer, default_chat_template

__all__ = [
    "ChatFormatError",
    "ChatPrompt",
    "ChatRenderer",
    "ContentDelta",
    "Event",
    "OutputStreamParser",
    "PromptEncoder",
    "ParsedOutput",
    "ParsedToolCall",
    "ReasoningDelta",
    "ThinkingBudget",
    "ToolCallArgsDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "collect_events",
    "count_reasoning_tokens",
    "default_chat_template",
    "parse_output",
    "prompt_ends_in_reasoning",
]
