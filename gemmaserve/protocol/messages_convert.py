"""Anthropic Messages <-> chat: a MessagesRequest becomes the internal ChatCompletionRequest, and the
chat answer becomes a `message` object or the `event:`-typed stream; errors take Anthropic's envelope."""

from __future__ import annotations

import json
from typing import Any

from gemmaserve.protocol.chat import ChatCompletionRequest
from gemmaserve.protocol.common import FieldError
from gemmaserve.protocol.messages import (
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    MessagesBody,
)

# HTTP status -> Anthropic error type (docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
    500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "api_error", 529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's envelope: {"type": "error", "error": {"type", "message"}}."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


# -- request ------------------------------------------------------------------------------------


def _image_part(block: ImageBlock) -> dict[str, Any]:
    src = block.source
    url = src.url if src.type == "url" else f"data:{src.media_type};base64,{src.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """A user message's blocks in order: tool_result blocks become tool messages, runs of text and
    images become user messages."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        here = f"{where}[{j}]"
        if isinstance(block, ToolResultBlock):
            if parts:
                out.append({"role": "user", "content": parts})
                parts = []
            if isinstance(block.content, str):
                content: Any = block.content
            else:
                content = [{"type": "text", "text": b.text} if isinstance(b, TextBlock) else _image_part(b)
                           for b in block.content]
                if all(p["type"] == "text" for p in content):
                    content = "".join(p["text"] for p in content)
            if block.is_error and isinstance(content, str):
                content = f"Error: {content}"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, DocumentBlock):
            raise FieldError(here, "document blocks are not supported on this endpoint")
        elif isinstance(block, (ThinkingBlock, RedactedThinkingBlock, ToolUseBlock)):
            raise FieldError(here, f"{block.type} blocks belong in assistant messages")
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_turn(blocks: list[Any], where: str) -> dict[str, Any]:
    text, reasoning, calls = "", "", []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            text += block.text
        elif isinstance(block, ThinkingBlock):
            reasoning += block.thinking
        elif isinstance(block, ToolUseBlock):
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}})
        elif isinstance(block, RedactedThinkingBlock):
            continue  # opaque to this model
        else:
            raise FieldError(f"{where}[{j}]", f"{block.type} blocks are not allowed in assistant messages")
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if reasoning:
        msg["reasoning"] = reasoning
    if calls:
        msg["tool_calls"] = calls
    return msg


def _messages(req: MessagesBody) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n\n".join(b.text for b in req.system)
        messages.append({"role": "system", "content": system})
    for i, m in enumerate(req.messages):
        blocks = [TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        where = f"messages[{i}].content"
        if m.role == "user":
            messages += _user_turn(blocks, where)
        elif m.role == "system":
            messages.append({"role": "system", "content": "".join(b.text for b in blocks if isinstance(b, TextBlock))})
        else:
            messages.append(_assistant_turn(blocks, where))
    return messages


def to_chat_request(req: MessagesBody) -> ChatCompletionRequest:
    """The chat request that generates this message (FieldError names the Messages field at fault)."""
    body: dict[str, Any] = {"messages": _messages(req)}
    for name in ("model", "models", "provider", "session_id"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.tools:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "parameters": t.input_schema,
                                                           **({"description": t.description} if t.description else {})}}
                         for t in req.tools]
    choice = req.tool_choice
    if choice is not None:
        if choice.type in ("any", "tool") and not req.tools:
            raise FieldError("tool_choice", f"tool_choice type '{choice.type}' needs a non-empty 'tools' list")
        if choice.type == "tool" and choice.name not in {t.name for t in req.tools or []}:
            raise FieldError("tool_choice.name", f"tool_choice names '{choice.name}', which is not in 'tools'")
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(
            choice.type, {"type": "function", "function": {"name": choice.name}})
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if req.thinking is not None:
        body["reasoning"] = ({"max_tokens": req.thinking.budget_tokens} if req.thinking.type == "enabled"
                             else {"enabled": req.thinking.type != "disabled"})
    out = req.output_config
    if out is not None and out.effort is not None and body.get("reasoning", {}).get("enabled") is True:
        body["reasoning"]["effort"] = out.effort  # adaptive thinking: the effort sets its share of max_tokens
    if out is not None and out.format is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": out.format.json_schema, "strict": True}}
    if isinstance(req, MessagesRequest):
        if req.thinking is not None and req.thinking.type == "enabled" \
                and req.thinking.budget_tokens >= req.max_tokens:  # type: ignore[operator]
            raise FieldError("thinking.budget_tokens", "budget_tokens must be less than max_tokens")
        body["max_tokens"] = req.max_tokens
        if req.stop_sequences:
            body["stop"] = req.stop_sequences
        for name in ("temperature", "top_p", "top_k", "seed", "min_p", "frequency_penalty", "presence_penalty",
                     "repetition_penalty", "stream"):
            if getattr(req, name) is not None:
                body[name] = getattr(req, name)
        if req.metadata is not None and req.metadata.user_id:
            body["user"] = req.metadata.user_id
    return ChatCompletionRequest.model_validate(body)


# -- response -----------------------------------------------------------------------------------


def stop_reason(finish: str | None, stop_sequence: str | None) -> str:
    """Chat finish_reason (+ the stop string that matched, if any) -> Anthropic's stop_reason."""
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    if stop_sequence is not None:
        return "stop_sequence"
    return "end_turn"


def usage(chat_usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic counts cache reads apart: input_tokens + cache_read_input_tokens = the whole prompt."""
    cached = chat_usage["prompt_tokens_details"]["cached_tokens"]
    return {"input_tokens": chat_usage["prompt_tokens"] - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": chat_usage["completion_tokens"],
            "cost": chat_usage["cost"]}


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def whole_message(msg_id: str, model: str, message: dict[str, Any], finish: str | None,
                  stop_sequence: str | None, chat_usage: dict[str, Any]) -> dict[str, Any]:
    """A chat `message` (content, reasoning, tool_calls) -> Anthropic's `message` object."""
    content: list[dict[str, Any]] = []
    if message.get("reasoning"):
        content.append({"type": "thinking", "thinking": message["reasoning"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": _arguments(call["function"]["arguments"])})
    reason = stop_reason(finish, stop_sequence)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": stop_sequence if reason == "stop_sequence" else None,
            "usage": usage(chat_usage)}


class MessageEvents:
    """Chat stream deltas -> Anthropic stream events (dicts with their `type`; the api frames each
    as `event: TYPE` + `data:`). One content block is open at a time; a delta of another kind closes
    it and opens the next at the next index."""

    def __init__(self, msg_id: str, model: str, prompt_tokens: int):
        self.msg_id, self.model, self.prompt_tokens = msg_id, model, prompt_tokens
        self.index = -1
        self.open_key: Any = None

    def start(self) -> list[dict[str, Any]]:
        message = {"id": self.msg_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.prompt_tokens, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 0}}
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _open(self, key: Any, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.index += 1
        self.open_key = key
        events.append({"type": "content_block_start", "index": self.index, "content_block": block})
        return events

    def _close(self) -> list[dict[str, Any]]:
        if self.open_key is None:
            return []
        self.open_key = None
        return [{"type": "content_block_stop", "index": self.index}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self.index, "delta": delta}

    def feed(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if delta.get("reasoning"):
            if self.open_key != "thinking":
                events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            events.append(self._delta({"type": "thinking_delta", "thinking": delta["reasoning"]}))
        if delta.get("content"):
            if self.open_key != "text":
                events += self._open("text", {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
        for frag in delta.get("tool_calls") or []:
            key = ("tool", frag["index"])
            if "id" in frag:
                events += self._open(key, {"type": "tool_use", "id": frag["id"], "name": frag["function"]["name"],
                                           "input": {}})
            args = (frag.get("function") or {}).get("arguments") or ""
            if args and self.open_key == key:
                events.append(self._delta({"type": "input_json_delta", "partial_json": args}))
        return events

    def finish(self, finish: str | None, stop_sequence: str | None, chat_usage: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        reason = stop_reason(finish, stop_sequence)
        u = usage(chat_usage)
        events.append({"type": "message_delta",
                       "delta": {"stop_reason": reason, "stop_sequence": stop_sequence if reason == "stop_sequence" else None},
                       "usage": {"input_tokens": u["input_tokens"], "cache_read_input_tokens": u["cache_read_input_tokens"],
                                 "output_tokens": u["output_tokens"], "cost": u["cost"]}})
        events.append({"type": "message_stop"})
        return events

    def error(self, status: int, message: str) -> list[dict[str, Any]]:
        return [error_body(status, message)]
