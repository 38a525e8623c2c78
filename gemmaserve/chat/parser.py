"""Split Gemma 4 generated text into reasoning, content and tool calls (streaming and whole-text)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gemmaserve.chat.tool_args import ArgsParser, match_preamble

__all__ = [
    "ContentDelta",
    "Event",
    "OutputStreamParser",
    "ParsedOutput",
    "ParsedToolCall",
    "ReasoningDelta",
    "ToolCallArgsDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "parse_output",
    "prompt_ends_in_reasoning",
]

CHANNEL_OPEN = "<|channel>"
CHANNEL_CLOSE = "<channel|>"
CALL_OPEN = "<|tool_call>"
CALL_CLOSE = "<tool_call|>"
QUOTE = '<|"|>'
# Where a model turn ends; the engine normally stops on them, but they must never reach content.
END_MARKERS = ("<turn|>", "<eos>", "<|tool_response>", "<|turn>")
_MARKERS = (CHANNEL_OPEN, CHANNEL_CLOSE, CALL_OPEN, CALL_CLOSE, QUOTE) + END_MARKERS
_MARKER_RE = re.compile("|".join(re.escape(m) for m in _MARKERS))
_THOUGHT = "thought\n"


@dataclass
class ReasoningDelta:
    text: str


@dataclass
class ContentDelta:
    text: str


@dataclass
class ToolCallStart:
    index: int
    name: str


@dataclass
class ToolCallArgsDelta:
    index: int
    text: str  # a JSON fragment; a call's fragments concatenate to its final arguments


@dataclass
class ToolCallEnd:
    index: int


Event = ReasoningDelta | ContentDelta | ToolCallStart | ToolCallArgsDelta | ToolCallEnd


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # JSON object text


@dataclass
class ParsedOutput:
    reasoning: str | None
    content: str | None
    tool_calls: list[ParsedToolCall] = field(default_factory=list)


class _MarkerScanner:
    """Cuts a text stream into text pieces and markers, holding back a possible partial marker."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, text: str) -> list[str | tuple[str]]:
        buf = self._buf + text
        out: list[str | tuple[str]] = []
        pos = 0
        for m in _MARKER_RE.finditer(buf):
            if m.start() > pos:
                out.append(buf[pos : m.start()])
            out.append((m.group(),))  # markers are 1-tuples, text is str
            pos = m.end()
        rest = buf[pos:]
        # Markers contain '<' only as their first character, so only the last '<' can begin one.
        cut = rest.rfind("<")
        if cut >= 0 and any(mk.startswith(rest[cut:]) for mk in _MARKERS):
            self._buf = rest[cut:]
            rest = rest[:cut]
        else:
            self._buf = ""
        if rest:
            out.append(rest)
        return out

    def flush(self) -> str:
        rest, self._buf = self._buf, ""
        return rest


class _Sink:
    """One output channel (reasoning or content) with its outer whitespace trimmed: leading
    whitespace is dropped, trailing whitespace is held until more text proves it inner."""

    def __init__(self) -> None:
        self.started = False
        self.pending = ""
        self._break = False

    def push(self, text: str) -> str:
        if not self.started or self._break:
            text = text.lstrip()
            if not text:
                return ""
            if self.started:
                self.pending = "\n\n"  # a block break replaces the whitespace around it
            self.started, self._break = True, False
        body = text.rstrip()
        if not body:
            self.pending += text
            return ""
        out = self.pending + body
        self.pending = text[len(body) :]
        return out

    def block_break(self) -> None:
        """A new block (second thought channel, content after a tool call) starts a paragraph."""
        self._break = self.started


class OutputStreamParser:
    """Incremental parser over decoded text (special tokens kept). `feed` returns the events the
    new text completes; `finish` flushes what was held back. Any split of the same text yields the
    same reasoning, content and tool calls."""

    def __init__(self, tools: list[dict] | None = None, starts_in_reasoning: bool = False) -> None:
        self._schemas: dict[str, Any] = {}
        for tool in tools or []:
            fn = tool.get("function", tool) if isinstance(tool, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                self._schemas[fn["name"]] = fn.get("parameters")
        self._scanner = _MarkerScanner()
        self._reasoning = _Sink()
        self._content = _Sink()
        self._index = -1  # index of the current/last tool call
        self._args: ArgsParser | None = None
        self._pre = ""  # text after <|tool_call> while the call:NAME{ preamble is undecided
        self._after_ws = ""  # whitespace after a call's closing brace
        self._thought = ""  # held text that may be the channel name `thought\n`
        self._fresh = not starts_in_reasoning  # nothing seen yet: a bare `thought\n` opens reasoning
        self._state = "reasoning" if starts_in_reasoning else "content"
        self._thought_pending = starts_in_reasoning
        self._events: list[Event] = []
        self._finished = False

    # -- emission -------------------------------------------------------------------------------
    def _emit(self, ev: Event) -> None:
        last = self._events[-1] if self._events else None
        if isinstance(ev, (ReasoningDelta, ContentDelta)) and type(last) is type(ev):
            last.text += ev.text  # type: ignore[union-attr]
        elif isinstance(ev, ToolCallArgsDelta) and isinstance(last, ToolCallArgsDelta) and last.index == ev.index:
            last.text += ev.text
        else:
            self._events.append(ev)

    def _to_reasoning(self, text: str) -> None:
        out = self._reasoning.push(text)
        if out:
            self._emit(ReasoningDelta(out))

    def _to_content(self, text: str) -> None:
        out = self._content.push(text)
        if out:
            self._emit(ContentDelta(out))

    def _args_delta(self, text: str) -> None:
        if text:
            self._emit(ToolCallArgsDelta(self._index, text))

    # -- public ---------------------------------------------------------------------------------
    def feed(self, delta: str) -> list[Event]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        for piece in self._scanner.feed(delta):
            if isinstance(piece, tuple):
                self._marker(piece[0])
            else:
                self._text(piece)
        events, self._events = self._events, []
        return events

    def finish(self) -> list[Event]:
        if self._finished:
            return []
        tail = self._scanner.flush()
        if tail:
            self._text(tail)
        self._resolve_thought(at_marker=True)
        if self._state == "pre":
            self._malformed_to_content()
        elif self._state in ("args", "after"):
            self._end_call()
        self._finished = True
        events, self._events = self._events, []
        return events

    # -- the `thought\n` channel name -------------------------------------------------------------
    def _resolve_thought(self, at_marker: bool) -> None:
        """Decide held text that may be `thought\\n`: dropped if it is (or `thought` right before a
        marker or the end), otherwise passed on as reasoning (or content, for a bare start)."""
        if not self._thought_pending:
            return
        held, self._thought, self._thought_pending = self._thought, "", False
        if held.startswith(_THOUGHT) or (at_marker and held == "thought"):
            keep = held[len(_THOUGHT) :] if held.startswith(_THOUGHT) else ""
            self._state = "reasoning"
            if keep:
                self._to_reasoning(keep)
        elif self._state == "reasoning":
            self._to_reasoning(held)
        else:
            self._to_content(held)

    def _hold_thought(self, text: str) -> None:
        self._thought += text
        if _THOUGHT.startswith(self._thought):
            if self._thought == _THOUGHT:
                self._resolve_thought(at_marker=False)
            return
        self._resolve_thought(at_marker=False)

    # -- text -----------------------------------------------------------------------------------
    def _text(self, text: str) -> None:
        while text:
            if self._fresh:
                self._fresh = False
                if _THOUGHT.startswith(text[: len(_THOUGHT)]):
                    self._thought_pending = True  # a bare leading `thought\n` (no <|channel>)
            if self._thought_pending:
                self._hold_thought(text)
                return
            state = self._state
            if state == "content" or state == "malformed":
                self._to_content(text)
                return
            if state == "reasoning":
                self._to_reasoning(text)
                return
            if state == "pre":
                text = self._pre_text(text)
            elif state == "args":
                frag, used = self._args.feed_text(text)  # type: ignore[union-attr]
                self._args_delta(frag)
                text = text[used:]
                if self._args.done:  # type: ignore[union-attr]
                    self._state = "after"
            elif state == "after":
                body = text.lstrip()
                if not body:
                    self._after_ws += text
                    return
                ws, self._after_ws = self._after_ws + text[: len(text) - len(body)], ""
                self._end_call()
                self._state = "content"
                self._to_content(ws + body)
                return

    def _pre_text(self, text: str) -> str:
        """Grow the preamble one character at a time; returns the text left after it is decided."""
        for i, c in enumerate(text):
            self._pre += c
            m = match_preamble(self._pre)
            if m.status == "need":
                continue
            if m.status == "bad":
                self._malformed_to_content()
                self._state = "malformed"
                self._to_content(text[i + 1 :])
                return ""
            self._index += 1
            self._emit(ToolCallStart(self._index, m.name))
            self._args = ArgsParser(self._schemas.get(m.name), m.opener)
            self._args_delta(self._args.start())
            self._pre = ""
            self._state = "args"
            return text[i + 1 :]
        return ""

    def _malformed_to_content(self) -> None:
        """A call that does not parse is kept, verbatim, as content."""
        self._to_content(CALL_OPEN + self._pre)
        self._pre = ""
        self._state = "malformed"

    def _end_call(self) -> None:
        if self._args is not None:
            self._args_delta(self._args.close())
            self._emit(ToolCallEnd(self._index))
            self._content.block_break()
        self._args = None
        self._after_ws = ""
        self._state = "content"

    # -- markers --------------------------------------------------------------------------------
    def _marker(self, mk: str) -> None:
        self._fresh = False
        state = self._state
        if self._thought_pending:
            self._resolve_thought(at_marker=True)
            state = self._state
        if state == "args":
            if mk == QUOTE:
                self._args_delta(self._args.feed_quote())  # type: ignore[union-attr]
                if self._args.done:  # type: ignore[union-attr]
                    self._state = "after"
                return
            if mk in (CHANNEL_OPEN, CHANNEL_CLOSE):
                self._text(mk)  # inside arguments these are just text
                return
            self._end_call()
        elif state == "after":
            self._end_call()
            if mk == QUOTE:
                self._to_content(mk)
                return
        elif state == "pre":
            self._malformed_to_content()
            state = "malformed"
        if state == "malformed":
            if mk in (QUOTE, CHANNEL_CLOSE, CALL_CLOSE):
                self._to_content(mk)
                if mk == CALL_CLOSE:
                    self._state = "content"
                return
            self._state = "content"
        # content / reasoning (and whatever the branches above fell through to)
        if mk == CHANNEL_OPEN:
            self._reasoning.block_break()
            self._state = "reasoning"
            self._thought_pending = True
        elif mk == CALL_OPEN:
            self._state = "pre"
            self._pre = ""
        elif mk == QUOTE:
            (self._to_reasoning if self._state == "reasoning" else self._to_content)(mk)
        else:
            # <channel|>, a stray <tool_call|>, or an end marker: dropped; text after it is content.
            self._state = "content"


def parse_output(text: str, tools: list[dict] | None = None, starts_in_reasoning: bool = False) -> ParsedOutput:
    """Parse a whole generated text (special tokens kept)."""
    parser = OutputStreamParser(tools, starts_in_reasoning=starts_in_reasoning)
    return collect_events(parser.feed(text) + parser.finish())


def collect_events(events: list[Event]) -> ParsedOutput:
    """Fold a stream of events into the final reasoning, content and tool calls."""
    reasoning: list[str] = []
    content: list[str] = []
    calls: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for ev in events:
        if isinstance(ev, ReasoningDelta):
            reasoning.append(ev.text)
        elif isinstance(ev, ContentDelta):
            content.append(ev.text)
        elif isinstance(ev, ToolCallStart):
            names[ev.index] = ev.name
            calls[ev.index] = []
        elif isinstance(ev, ToolCallArgsDelta):
            calls[ev.index].append(ev.text)
    return ParsedOutput(
        reasoning="".join(reasoning) or None,
        content="".join(content) or None,
        tool_calls=[ParsedToolCall(names[i], "".join(calls[i])) for i in sorted(calls)],
    )


def prompt_ends_in_reasoning(prompt: str) -> bool:
    """True when a rendered prompt leaves a thought channel open (some templates open one after a
    tool response), so the parser must start in reasoning (vLLM #49717)."""
    opened = prompt.rfind(CHANNEL_OPEN)
    if opened < 0:
        return False
    tail = prompt[opened + len(CHANNEL_OPEN) :]
    return not any(mk in tail for mk in (CHANNEL_CLOSE, CALL_OPEN) + END_MARKERS)
