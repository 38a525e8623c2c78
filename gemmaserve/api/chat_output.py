"""Generated text -> OpenRouter message / delta shapes: reasoning, reasoning_details, tool_calls."""

from __future__ import annotations

from typing import Any, Callable

from gemmaserve.api.generation import random_alnum
from gemmaserve.chat.parser import (
    ContentDelta,
    OutputStreamParser,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallStart,
    parse_output,
)
from gemmaserve.types import TokenLogprob, TopLogprob


def new_tool_call_id() -> str:
    return f"call_{random_alnum(24)}"


def reasoning_detail(text: str) -> dict[str, Any]:
    # What OpenRouter emits for open-weight models served over OpenAI-compatible APIs (spec §5.1).
    return {"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}


def chat_logprobs(items: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """OpenAI's chat logprobs object: {content: [{token, logprob, bytes, top_logprobs}], refusal}."""
    if items is None:
        return None
    content = []
    for lp in items:
        content.append({
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": token_bytes(lp),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": token_bytes(t)} for t in lp.top],
        })
    return {"content": content, "refusal": None}


def token_bytes(lp: TokenLogprob | TopLogprob) -> list[int]:
    """OpenAI's `bytes` (a list of ints): the engine's raw token bytes, so a byte-fallback token
    gives its own byte, not the UTF-8 of the U+FFFD its text shows."""
    raw = lp.bytes if lp.bytes is not None else lp.token.encode("utf-8")
    return list(raw)


def whole_message(
    text: str,
    *,
    tools: list[dict] | None,
    exclude_reasoning: bool,
    parallel_tool_calls: bool,
    new_call_id: Callable[[], str],
    starts_in_reasoning: bool = False,
) -> tuple[dict[str, Any], bool]:
    """The non-streaming `message` object and whether it carries tool calls."""
    parsed = parse_output(text, tools=tools, starts_in_reasoning=starts_in_reasoning)
    calls = list(parsed.tool_calls)
    if not parallel_tool_calls:
        calls = calls[:1]
    reasoning = parsed.reasoning or None
    message: dict[str, Any] = {
        "role": "assistant",
        "content": parsed.content if parsed.content else (None if calls or reasoning else ""),
        "refusal": None,
        "reasoning": None if exclude_reasoning else reasoning,
    }
    if reasoning and not exclude_reasoning:
        message["reasoning_details"] = [reasoning_detail(reasoning)]
    if calls:
        message["tool_calls"] = [
            {"id": new_call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    return message, bool(calls)


class DeltaStream:
    """Feeds text deltas through CHAT's incremental parser and returns the `delta` objects to send.

    Consecutive events of one kind are merged so one engine step gives one chunk per kind. Every
    tool-call fragment carries its integer `index`; the first also the id, type and name
    (openai-python's accumulator relies on that, spec §4.3)."""

    def __init__(
        self,
        *,
        tools: list[dict] | None,
        exclude_reasoning: bool,
        parallel_tool_calls: bool,
        new_call_id: Callable[[], str],
        starts_in_reasoning: bool = False,
    ):
        self.parser = OutputStreamParser(tools=tools, starts_in_reasoning=starts_in_reasoning)
        self.exclude_reasoning = exclude_reasoning
        self.parallel = parallel_tool_calls
        self.new_call_id = new_call_id
        self.has_tool_calls = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._deltas(self.parser.feed(text)) if text else []

    def finish(self) -> list[dict[str, Any]]:
        return self._deltas(self.parser.finish())

    def _deltas(self, events: list[Any]) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        last_kind = None
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                if self.exclude_reasoning or not ev.text:
                    continue
                if last_kind == "reasoning":
                    deltas[-1]["reasoning"] += ev.text
                    deltas[-1]["reasoning_details"][0]["text"] += ev.text
                else:
                    deltas.append({"role": "assistant", "content": "", "reasoning": ev.text,
                                   "reasoning_details": [reasoning_detail(ev.text)]})
                last_kind = "reasoning"
            elif isinstance(ev, ContentDelta):
                if not ev.text:
                    continue
                if last_kind == "content":
                    deltas[-1]["content"] += ev.text
                else:
                    deltas.append({"role": "assistant", "content": ev.text})
                last_kind = "content"
            elif isinstance(ev, ToolCallStart):
                if ev.index > 0 and not self.parallel:
                    continue
                self.has_tool_calls = True
                deltas.append({"role": "assistant", "content": "", "tool_calls": [{
                    "index": ev.index, "id": self.new_call_id(), "type": "function",
                    "function": {"name": ev.name, "arguments": ""},
                }]})
                # The opening fragment stays bare (arguments ""), as OpenRouter sends it.
                last_kind = ("start", ev.index)
            elif isinstance(ev, ToolCallArgsDelta):
                if (ev.index > 0 and not self.parallel) or not ev.text:
                    continue
                if last_kind == ("tool", ev.index):
                    deltas[-1]["tool_calls"][0]["function"]["arguments"] += ev.text
                else:
                    deltas.append({"role": "assistant", "content": "", "tool_calls": [
                        {"index": ev.index, "function": {"arguments": ev.text}}]})
                last_kind = ("tool", ev.index)
            # ToolCallEnd carries nothing a client needs: the finish chunk closes the call.
        return deltas
