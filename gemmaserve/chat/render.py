"""Render OpenAI/OpenRouter chat messages and tools into a Gemma 4 prompt string via the chat template."""

from __future__ import annotations

import json
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "ChatFormatError",
    "ChatRenderer",
    "default_chat_template",
    "normalize_messages",
    "normalize_tools",
]

_ROLES = ("system", "developer", "user", "assistant", "tool")
# Wire part types that name media. Images and video reach the template only as resolved parts
# (`resolved_media_part`, built by the API from decoded media); anything else is a 400.
_MEDIA_PARTS = ("image_url", "input_audio", "video_url", "input_video", "file", "image", "audio", "video")
_RESOLVED = ("image", "video")  # what the template renders as <|image|> / <|video|>


def resolved_media_part(kind: str, expansion: str, media: Any) -> dict:
    """A content part standing for one decoded image or video: the template writes its placeholder
    (<|image|> / <|video|>), which the prompt encoder replaces by `expansion` (the soft-token run the
    processor computed); `media` rides along for the engine."""
    if kind not in _RESOLVED:
        raise ValueError(f"unknown media kind {kind!r}")
    return {"type": kind, "expansion": expansion, "media": media}


def media_parts(messages: list[dict]) -> list[dict]:
    """The resolved media parts of normalized messages, in render order."""
    return [p for m in messages if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and "expansion" in p]


class ChatFormatError(ValueError):
    """Messages or tools that cannot be rendered into a Gemma 4 prompt; the API answers 400."""


def default_chat_template() -> str:
    """The v2 Gemma 4 template shipped inside the package (the one demo checkpoints carry)."""
    return resources.files("gemmaserve").joinpath("templates/chat_template.jinja").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Jinja environment: the same sandbox, whitespace settings, filters and globals transformers gives
# chat templates (transformers/utils/chat_template_utils.py), so a template renders byte-identically
# here and in `apply_chat_template`.


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes; chat templates expect plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates without exposing the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore attributes (no reaching into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - mirrors jinja's Namespace signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"Chat templates cannot set underscore attributes ({name!r}).")


class _GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}…{% endgeneration %}` (assistant-mask markers) and renders the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


# ----------------------------------------------------------------------------------------------
# Message normalisation: wire shape -> what the template reads (as vLLM prepares messages).


def _text_parts(content: Any, where: str, joiner: str) -> str:
    """Content that may only hold text: a string, null, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ChatFormatError(f"{where}: content must be a string or a list of content parts.")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise ChatFormatError(f"{where}: each content part must be an object.")
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise ChatFormatError(f"{where}: a '{kind}' part needs a string '{kind}' field.")
            texts.append(text)
        elif kind in _MEDIA_PARTS:
            what = "audio" if "audio" in kind else kind
            raise ChatFormatError(f"{where}: content parts of type '{kind}' are not supported here "
                                  f"({what} input is not accepted in this position or by this model).")
        else:
            raise ChatFormatError(f"{where}: unknown content part type {kind!r}.")
    return joiner.join(texts)


def _user_content(content: Any, where: str) -> Any:
    """A user message's content: a string when it is text only (as before), else the list of text
    parts and resolved media parts in their order (the template renders each in place)."""
    if not isinstance(content, list) or not any(isinstance(p, dict) and "expansion" in p for p in content):
        return _text_parts(content, where, "\n")
    parts: list[Any] = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and "expansion" in part:
            parts.append(part)
        else:
            parts.append({"type": "text", "text": _text_parts([part], f"{where}.content[{j}]", "")})
    return parts


def _reasoning_of(msg: dict, where: str) -> str | None:
    """Reasoning carried back on an assistant message, under any of its wire names."""
    for key in ("reasoning_content", "reasoning"):
        value = msg.get(key)
        if isinstance(value, str):
            return value
    details = msg.get("reasoning_details")
    if isinstance(details, list):
        # Only plain-text items can be replayed; summaries/encrypted blobs are accepted and ignored.
        texts = [
            d["text"]
            for d in details
            if isinstance(d, dict) and d.get("type") == "reasoning.text" and isinstance(d.get("text"), str)
        ]
        if texts:
            return "".join(texts)
    return None


def _tool_calls_of(msg: dict, where: str) -> list[dict]:
    calls = msg.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise ChatFormatError(f"{where}: tool_calls must be a list.")
    out = []
    for j, call in enumerate(calls):
        here = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ChatFormatError(f"{here}: a tool call needs function.name.")
        args = fn.get("arguments")
        if args is None or (isinstance(args, str) and not args.strip()):
            args = {}
        elif isinstance(args, str):
            # The template pastes a string verbatim, so JSON must become an object first.
            try:
                args = json.loads(args)
            except json.JSONDecodeError as exc:
                raise ChatFormatError(f"{here}: function.arguments is not valid JSON ({exc.msg}).") from None
        if not isinstance(args, dict):
            raise ChatFormatError(f"{here}: function.arguments must be a JSON object.")
        item: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            item["id"] = call["id"]
        out.append(item)
    return out


def normalize_messages(messages: Any) -> list[dict]:
    """Validate wire-shape messages and rewrite them into plain dicts for the template.

    developer -> system; text-part lists -> strings; tool-call arguments JSON -> objects;
    reasoning / reasoning_content / reasoning_details -> `reasoning_content`. Raises ChatFormatError.
    """
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("messages must be a non-empty list.")
    out: list[dict] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ChatFormatError(f"{where}: each message must be an object.")
        role = msg.get("role")
        if role not in _ROLES:
            raise ChatFormatError(f"{where}: unsupported role {role!r} (expected one of {', '.join(_ROLES)}).")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text_parts(msg.get("content"), where, "\n")})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(msg.get("content"), where)})
        elif role == "assistant":
            item: dict[str, Any] = {"role": "assistant", "content": _text_parts(msg.get("content"), where, "\n")}
            calls = _tool_calls_of(msg, where)
            if calls:
                item["tool_calls"] = calls
            reasoning = _reasoning_of(msg, where)
            if reasoning is not None:
                item["reasoning_content"] = reasoning
            out.append(item)
        else:
            prev = next((m for m in reversed(out) if m["role"] != "tool"), None)
            if prev is None or out[-1]["role"] not in ("tool", "assistant") or not prev.get("tool_calls"):
                raise ChatFormatError(f"{where}: a tool message must follow an assistant message with tool_calls.")
            # Tool result parts are concatenated as they are (the template's rule for part lists).
            item = {"role": "tool", "content": _text_parts(msg.get("content"), where, "")}
            if isinstance(msg.get("tool_call_id"), str):
                item["tool_call_id"] = msg["tool_call_id"]
            if isinstance(msg.get("name"), str):
                item["name"] = msg["name"]
            out.append(item)
    return out


def normalize_tools(tools: Any) -> list[dict] | None:
    """Validate OpenAI-shape function tools; None or [] means no tools."""
    if not tools:
        return None
    if not isinstance(tools, list):
        raise ChatFormatError("tools must be a list.")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ChatFormatError(f"tools[{i}]: a function tool needs function.name.")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ChatFormatError(f"tools[{i}]: function.parameters must be a JSON Schema object.")
        clean: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            clean["description"] = fn["description"]
        if params:
            clean["parameters"] = params
        out.append({"type": "function", "function": clean})
    return out


class ChatRenderer:
    """Compiles a chat template once and renders conversations into prompt strings."""

    def __init__(self, template: str, bos_token: str = "<bos>") -> None:
        self.template_source = template
        self.bos_token = bos_token
        try:
            self._template = _environment().from_string(template)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise ValueError(f"chat template does not compile: {exc}") from exc

    @classmethod
    def default(cls, bos_token: str = "<bos>") -> "ChatRenderer":
        return cls(default_chat_template(), bos_token=bos_token)

    def render_template(self, **variables: Any) -> str:
        """Render the template with exactly these variables (no normalisation), e.g. native
        `tool_responses` or media parts that `render` refuses."""
        variables.setdefault("bos_token", self.bos_token)
        try:
            return self._template.render(**variables)
        except jinja2.exceptions.TemplateError as exc:
            raise ChatFormatError(f"cannot render these messages: {exc}") from exc

    def render(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        enable_thinking: bool = False,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text, starting with the BOS token (tokenize it without adding another)."""
        msgs = normalize_messages(messages)
        tool_list = normalize_tools(tools)
        return self.render_template(
            messages=msgs,
            tools=tool_list,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
        )
