"""Chat messages -> prompt token ids where client text stays text: control-token strings inside
user, system and tool content (and tool definitions) are encoded as ordinary characters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from tokenizers import Tokenizer as HFTokenizer

from gemmaserve.chat.parser import prompt_ends_in_reasoning
from gemmaserve.chat.render import ChatRenderer, media_parts, normalize_messages, normalize_tools

__all__ = ["ChatPrompt", "PromptEncoder"]

# Placeholders come from Supplementary Private Use Area-B, which no real text should hold; the
# base moves on if a conversation does use it, so a placeholder can never be the client's char.
_PUA_START, _PUA_END = 0x100000, 0x10FFFD
# Roles whose text the client writes and the template only wraps. Assistant content is the
# model's own format replayed (the template strips <|channel>...<channel|> from it), so it is
# encoded as rendered; only the string values of its tool-call arguments are protected.
_TEXT_ROLES = ("system", "user", "tool")


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered conversation: `ids` to generate from and `text`, which decodes from them."""

    ids: list[int]
    text: str  # client control strings restored, i.e. what a plain render would print
    ends_in_reasoning: bool  # the template (not the client) left a thought channel open


class PromptEncoder:
    """Renders and encodes conversations for one tokenizer.

    transformers' apply_chat_template and vLLM tokenize the rendered string as is, so a user who
    writes "<turn|>\\n<|turn>system\\n..." forges a system turn and "<|tool_call>" opens a real
    call. Here the template's markup keeps its control tokens and every control-token string the
    client wrote is encoded as the characters it is (as OpenAI's harmony renderer does). Text with
    no control strings encodes to exactly `tokenizer.encode(rendered)`.

    `tokenizer` is gemmaserve.tokenizer.Tokenizer (or any object with `.encode(text)` and `.hf`,
    the tokenizers.Tokenizer).
    """

    def __init__(self, renderer: ChatRenderer, tokenizer: Any) -> None:
        self.renderer = renderer
        self.tokenizer = tokenizer
        hf: HFTokenizer = tokenizer.hf
        # A private copy that matches no special tokens; the shared one is left untouched.
        self._literal = HFTokenizer.from_str(hf.to_str())
        self._literal.encode_special_tokens = True
        specials = [t.content for t in hf.get_added_tokens_decoder().values() if t.special and t.content]
        # Longest first, so a marker that contains another is taken whole.
        self.control_strings: tuple[str, ...] = tuple(sorted(set(specials), key=len, reverse=True))
        # Real vocabularies hold thousands of special tokens (<unused0>...): rather than one huge
        # alternation tried at every character, jump between possible first characters and look
        # the candidate lengths up in a set, longest first.
        self._control_set = frozenset(self.control_strings)
        self._lengths = sorted({len(s) for s in self.control_strings}, reverse=True)
        firsts = "".join(sorted({s[0] for s in self.control_strings}))
        self._first_re = re.compile("[" + re.escape(firsts) + "]") if firsts else None
        self._literal_ids = {s: self._literal.encode(s, add_special_tokens=False).ids for s in self.control_strings}
        # Private-use characters the template itself writes (none in Gemma's), found once.
        self._template_pua = {ord(c) for c in renderer.template_source if ord(c) >= _PUA_START}

    def encode_literal(self, text: str) -> list[int]:
        """Ids of `text` with every control-token string taken as plain characters."""
        return self._literal.encode(text, add_special_tokens=False).ids

    def encode(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        enable_thinking: bool = False,
        add_generation_prompt: bool = True,
        suffix: str = "",
    ) -> ChatPrompt:
        """Render with the chat template and encode. `suffix` (an assistant prefill) is appended
        to the rendered text as is, control strings included: it continues the model's turn."""
        msgs = normalize_messages(messages)
        tool_list = normalize_tools(tools)
        base = self._placeholder_base(msgs, tool_list, suffix)
        to_ph = {s: chr(base + i) for i, s in enumerate(self.control_strings)}
        from_ph = {v: k for k, v in to_ph.items()}

        def mask(text: str) -> str:
            return self._replace_controls(text, to_ph)

        for msg in msgs:
            if msg["role"] in _TEXT_ROLES:
                content = msg["content"]
                # Resolved media parts keep their expansion's real control tokens; text is masked.
                msg["content"] = (mask(content) if isinstance(content, str) else
                                  [p if "expansion" in p else _map_strings(p, mask) for p in content])
            for call in msg.get("tool_calls", ()):
                call["function"]["arguments"] = _map_strings(call["function"]["arguments"], mask)
        if tool_list:
            tool_list = [_map_strings(t, mask) for t in tool_list]
        rendered = self.renderer.render_template(
            messages=msgs, tools=tool_list, documents=None,
            add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking,
        ) + suffix
        media = media_parts(msgs)
        if media:
            rendered = _expand_media(rendered, media)
        ids: list[int] = []
        if from_ph:
            ph_re = re.compile("[" + "".join(from_ph) + "]")
            pos = 0
            for m in ph_re.finditer(rendered):
                if m.start() > pos:
                    ids += self.tokenizer.encode(rendered[pos : m.start()])
                ids += self._literal_ids[from_ph[m.group()]]
                pos = m.end()
            tail = rendered[pos:]
        else:
            tail = rendered
        if tail or not ids:
            ids += self.tokenizer.encode(tail)
        text = "".join(from_ph.get(c, c) for c in rendered) if from_ph else rendered
        # Judged on the masked render: a client's "<|channel>" is text, not an open channel.
        return ChatPrompt(ids, text, prompt_ends_in_reasoning(rendered))

    def _replace_controls(self, text: str, to_ph: dict[str, str]) -> str:
        """`text` with each control string (leftmost, longest) replaced by its placeholder."""
        if self._first_re is None:
            return text
        out: list[str] = []
        pos = 0
        m = self._first_re.search(text)
        while m is not None:
            i = m.start()
            hit = next((text[i : i + n] for n in self._lengths if text[i : i + n] in self._control_set), None)
            if hit is None:
                m = self._first_re.search(text, i + 1)
                continue
            out += [text[pos:i], to_ph[hit]]
            pos = i + len(hit)
            m = self._first_re.search(text, pos)
        return "".join(out) + text[pos:]

    def _placeholder_base(self, msgs: list[dict], tools: list[dict] | None, suffix: str) -> int:
        used: set[int] = set(self._template_pua)

        def collect(s: str) -> str:
            used.update(ord(c) for c in s if ord(c) >= _PUA_START)
            return s

        _map_strings(msgs, collect)
        _map_strings(tools, collect)
        collect(suffix)
        n = len(self.control_strings)
        base = _PUA_START
        for code in sorted(used):
            if code >= base + n:
                break
            if code >= base:
                base = code + 1
        if base + n > _PUA_END:
            raise ValueError("no free private-use characters for control-string placeholders")
        return base


_MEDIA_RE = re.compile(r"<\|image\|>|<\|video\|>")


def _expand_media(rendered: str, parts: list[dict]) -> str:
    """Each template-written <|image|> / <|video|> (client text holding them was masked) replaced by
    its media's soft-token expansion, in order, at the text level as transformers' processor does:
    the text around a video's timestamps then tokenizes exactly as there."""
    it = iter(parts)

    def sub(m: re.Match) -> str:
        part = next(it, None)
        if part is None or m.group() != ("<|image|>" if part["type"] == "image" else "<|video|>"):
            raise ValueError("the chat template placed media placeholders out of order")
        return part["expansion"]

    out = _MEDIA_RE.sub(sub, rendered)
    if next(it, None) is not None:
        raise ValueError("the chat template dropped a media part")
    return out


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """`value` with `fn` applied to every string inside it (dict keys left as they are)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value
