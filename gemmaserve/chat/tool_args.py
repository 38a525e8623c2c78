"""Gemma 4 tool-call syntax: the `call:NAME{` preamble and an incremental key:value -> JSON argument parser."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ArgsParser", "PreambleMatch", "match_preamble", "coerce_bare", "schema_types"]

_NAME_CHARS = re.compile(r"[A-Za-z0-9_\-.]*")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
# Limits that make a runaway preamble malformed; they depend on the text only, never on how the
# stream was split, so a whole-text parse and a streamed parse decide the same way.
_MAX_NAME = 256
_MAX_SPACE = 64


@dataclass
class PreambleMatch:
    """Result of matching `[ws](call)?:NAME[ws]{` against the text after `<|tool_call>`."""

    status: str  # "need" (could still match), "bad" (cannot), "ok"
    name: str = ""
    opener: str = ""  # "{" or "(" (the `call:name(...)` deviation)


def match_preamble(buf: str) -> PreambleMatch:
    s = buf.lstrip()
    if len(buf) - len(s) > _MAX_SPACE:
        return PreambleMatch("bad")
    if not s:
        return PreambleMatch("need")
    if s.startswith("call:"):
        rest = s[5:]
    elif s.startswith(":"):  # `<|tool_call>:name{` without `call` (vLLM #53431)
        rest = s[1:]
    elif "call:".startswith(s):
        return PreambleMatch("need")
    else:
        return PreambleMatch("bad")
    name = _NAME_CHARS.match(rest).group()
    after = rest[len(name) :]
    tail = after.lstrip()
    if len(name) > _MAX_NAME or len(after) - len(tail) > _MAX_SPACE:
        return PreambleMatch("bad")
    if not tail:
        return PreambleMatch("need")
    if tail[0] in "{(" and name:
        return PreambleMatch("ok", name, tail[0])
    return PreambleMatch("bad")


# ----------------------------------------------------------------------------------------------
# Typing values by the tool's JSON schema.


def schema_types(schema: Any) -> frozenset[str]:
    """The JSON types a schema allows (type, type lists, anyOf/oneOf members); empty = unknown."""
    if not isinstance(schema, dict):
        return frozenset()
    out: set[str] = set()
    t = schema.get("type")
    if isinstance(t, str):
        out.add(t)
    elif isinstance(t, list):
        out.update(x for x in t if isinstance(x, str))
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            out |= schema_types(sub)
    return frozenset(out)


def _sub_schema(schema: Any, key: str | None) -> Any:
    """Schema of property `key` (key=None: of the array items), looking through anyOf/oneOf."""
    if not isinstance(schema, dict):
        return None
    if key is None:
        if isinstance(schema.get("items"), dict):
            return schema["items"]
    else:
        props = schema.get("properties")
        if isinstance(props, dict) and key in props:
            return props[key]
    for k in ("anyOf", "oneOf"):
        for sub in schema.get(k) or []:
            found = _sub_schema(sub, key)
            if found is not None:
                return found
    return None


def _try_type(t: str, raw: str) -> str | None:
    """`raw` as JSON text of type `t`, or None when it is not one."""
    low = raw.lower()
    if t == "null":
        return "null" if low in ("null", "none", "nil") else None
    if t == "boolean":
        return low if low in ("true", "false") else None
    if t in ("integer", "number"):
        if _INTEGER.fullmatch(raw):
            return str(int(raw))
        try:
            value = float(raw)
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        if t == "integer":
            return str(int(value)) if value.is_integer() else None
        return raw if _JSON_NUMBER.fullmatch(raw) else json.dumps(value)
    if t in ("object", "array"):
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        ok = isinstance(value, dict) if t == "object" else isinstance(value, list)
        return json.dumps(value, ensure_ascii=False) if ok else None
    if t == "string":
        return json.dumps(raw, ensure_ascii=False)
    return None


_PRIORITY = ("null", "integer", "number", "boolean", "object", "array", "string")


def coerce_bare(raw: str, schema: Any, quoted: bool = False) -> str:
    """JSON text for a value: by the schema's types in vLLM's priority order; without a usable
    schema, literals (null/true/false/numbers) are typed and anything else is a string."""
    types = schema_types(schema)
    for t in _PRIORITY:
        if t in types:
            out = _try_type(t, raw)
            if out is not None:
                return out
    if quoted:
        return json.dumps(raw, ensure_ascii=False)
    for t in ("null", "boolean"):
        out = _try_type(t, raw)
        if out is not None:
            return out
    if _JSON_NUMBER.fullmatch(raw):  # only literal JSON numbers: `007` stays the string "007"
        return raw
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
    return json.dumps(raw, ensure_ascii=False)


def _streams_as_string(schema: Any) -> bool:
    types = schema_types(schema)
    return not types or "string" in types


# ----------------------------------------------------------------------------------------------
# The incremental argument parser.


@dataclass
class _Frame:
    kind: str  # "obj" or "arr"
    closer: str  # "}", ")" (top-level paren form) or "]"
    schema: Any
    state: str  # key | bkey | qkey | colon | value | str | bare | after
    first: bool = True
    buf: list[str] = field(default_factory=list)
    vschema: Any = None
    streaming: bool = False  # the current quoted value is streamed as a JSON string


class ArgsParser:
    """Turns Gemma `key:value,...}` text (with `<|"|>` quotes fed separately) into JSON text.

    The top-level `{` is emitted by `start()`. Every fragment returned is final (never revised),
    so their concatenation, once `done` or after `close()`, is exactly one valid JSON object:
    `json.dumps(obj, ensure_ascii=False)` layout. Unknown structure is absorbed, never raised.
    """

    def __init__(self, schema: Any, opener: str = "{") -> None:
        self._stack = [_Frame("obj", ")" if opener == "(" else "}", schema, "key")]
        self.done = False

    def start(self) -> str:
        return "{"

    # -- helpers --------------------------------------------------------------------------------
    def _begin_value(self, f: _Frame, out: list[str]) -> None:
        """Emit what precedes a value: the pending key (objects) or the separator (arrays)."""
        if f.kind == "obj":
            key = "".join(f.buf).strip()
            out.append(("" if f.first else ", ") + json.dumps(key, ensure_ascii=False) + ": ")
            f.vschema = _sub_schema(f.schema, key)
        else:
            out.append("" if f.first else ", ")
            f.vschema = _sub_schema(f.schema, None)
        f.first = False
        f.buf = []

    def _open_string(self, f: _Frame, out: list[str]) -> None:
        f.state = "str"
        f.streaming = _streams_as_string(f.vschema)
        if f.streaming:
            out.append('"')

    def _end_bare(self, f: _Frame, out: list[str]) -> None:
        raw = "".join(f.buf).strip()
        out.append(coerce_bare(raw, f.vschema) if raw else "null")
        f.buf = []
        f.state = "after"

    def _close(self, out: list[str]) -> None:
        f = self._stack.pop()
        out.append("}" if f.kind == "obj" else "]")
        if self._stack:
            self._stack[-1].state = "after"
        else:
            self.done = True

    # -- feeding --------------------------------------------------------------------------------
    def feed_quote(self) -> str:
        """One `<|"|>` marker."""
        if self.done:
            return ""
        out: list[str] = []
        f = self._stack[-1]
        if f.state == "key":
            f.state, f.buf = "qkey", []
        elif f.state == "qkey":
            f.state = "colon"
        elif f.state in ("bkey", "colon"):  # `key<|"|>v` without ':'
            self._begin_value(f, out)
            self._open_string(f, out)
        elif f.state == "value":
            self._begin_value(f, out)
            self._open_string(f, out)
        elif f.state == "str":
            if f.streaming:
                out.append('"')
            else:
                out.append(coerce_bare("".join(f.buf), f.vschema, quoted=True))
            f.buf, f.state = [], "after"
        elif f.state == "bare":
            f.buf.append('"')  # a stray quote inside a bare value stays as a plain quote
        elif f.state == "after":
            if f.kind == "obj":
                f.state, f.buf = "qkey", []
            else:
                self._begin_value(f, out)
                self._open_string(f, out)
        return "".join(out)

    def feed_text(self, text: str) -> tuple[str, int]:
        """Plain text; returns (JSON fragment, characters consumed). Consumption stops right
        after the top-level closer; the caller handles the rest."""
        out: list[str] = []
        i = 0
        n = len(text)
        while i < n and not self.done:
            f = self._stack[-1]
            if f.state == "str":
                # Fast path: a whole run of string text at once.
                if f.streaming:
                    out.append(json.dumps(text[i:], ensure_ascii=False)[1:-1])
                else:
                    f.buf.append(text[i:])
                i = n
                break
            if f.state == "qkey":
                f.buf.append(text[i:])
                i = n
                break
            self._step(f, text[i], out)
            i += 1
        return "".join(out), i

    def _step(self, f: _Frame, c: str, out: list[str]) -> None:
        st = f.state
        if st == "key":
            if c.isspace() or c == ",":
                return
            if c == f.closer:
                self._close(out)
            else:
                f.state, f.buf = "bkey", [c]
        elif st == "bkey":
            if c in ":=":
                f.state = "value"
            elif c == "," or c == f.closer:
                self._begin_value(f, out)  # a key without a value
                out.append("null")
                f.state = "after"
                self._step(f, c, out)
            else:
                f.buf.append(c)
        elif st == "colon":
            if c.isspace():
                return
            f.state = "value"
            if c not in ":=":
                self._step(f, c, out)
        elif st == "value":
            if c.isspace():
                return
            if c == f.closer or c == ",":
                if f.kind == "obj":
                    self._begin_value(f, out)
                    out.append("null")
                    f.state = "after"
                    self._step(f, c, out)
                elif c == f.closer:
                    self._close(out)  # `[]` or a trailing comma
                return
            self._begin_value(f, out)
            if c == "{":
                f.state = "after"
                out.append("{")
                self._stack.append(_Frame("obj", "}", f.vschema, "key"))
            elif c == "[":
                f.state = "after"
                out.append("[")
                self._stack.append(_Frame("arr", "]", f.vschema, "value"))
            else:
                f.state, f.buf = "bare", [c]
        elif st == "bare":
            if c == "," or c == f.closer:
                self._end_bare(f, out)
                self._step(f, c, out)
            else:
                f.buf.append(c)
        elif st == "after":
            if c.isspace():
                return
            if c == ",":
                f.state = "key" if f.kind == "obj" else "value"
            elif c == f.closer:
                self._close(out)
            else:  # a missing comma: start the next entry with this character
                f.state = "key" if f.kind == "obj" else "value"
                self._step(f, c, out)

    def close(self) -> str:
        """Finish whatever is open (a truncated or unterminated call) into valid JSON."""
        out: list[str] = []
        while not self.done:
            f = self._stack[-1]
            if f.state == "str":
                if f.streaming:
                    out.append('"')
                else:
                    out.append(coerce_bare("".join(f.buf), f.vschema, quoted=True))
                f.state = "after"
            elif f.state == "bare":
                self._end_bare(f, out)
            elif f.state in ("bkey", "qkey", "colon") or (f.state == "value" and f.kind == "obj"):
                self._begin_value(f, out)
                out.append("null")
                f.state = "after"
            else:
                self._close(out)
        return "".join(out)
