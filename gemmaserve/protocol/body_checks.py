"""Checks on a request body's raw JSON before field validation: every string encodable as UTF-8
(no lone surrogates) and nesting bounded, each failure naming the field; floats checked in the
float32 precision the sampler uses them in."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from pydantic import BaseModel, model_validator

# Deeper than any real request: a tool schema nested ten objects deep is about 25 levels of body
# JSON. The template renderer and the grammar compiler recurse once or more per level, so past
# ~90 levels Python's recursion limit was hit (a 4 KB body gave a 500). 64 leaves them room.
MAX_JSON_DEPTH = 64
# Top-level fields whose bad values are answered by admission, not validation: an unknown model
# id, surrogate or not, is a 404 (spec §2.6), not a 400.
_ADMISSION_FIELDS = frozenset({"model", "models"})
_FLOAT32 = struct.Struct("<f")
_SCALARS = frozenset({int, float, bool, type(None)})
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32


def field_path(parts: list[str | int]) -> str:
    """messages[0].content: the spelling error bodies use for `param`."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


class FieldError(ValueError):
    """A check that names the field to blame (the API reports it as `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def check_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH, skip_top: frozenset[str] = frozenset()) -> None:
    """Raise FieldError naming the first field that holds a string UTF-8 cannot encode (a lone
    surrogate from a `\\ud800` escape) or that nests deeper than `max_depth`. Iterative, so the
    check itself cannot overflow the stack; the path is rebuilt only on failure (`trail` is a
    linked list of keys), so a body of a million token ids costs one type test per id."""
    if isinstance(value, str):
        _check_text(value, None)
    stack: list[tuple[Any, int, Any]] = [(value, 0, None)]
    while stack:
        node, depth, trail = stack.pop()
        if depth >= max_depth:
            raise FieldError(field_path(_unwind(trail)), f"nests deeper than {max_depth} levels")
        if type(node) is list and _SCALARS.issuperset(map(type, node)):
            continue  # token ids and other numbers: nothing to check, and no Python loop over them
        items = node.items() if type(node) is dict else enumerate(node)
        for key, item in items:
            if depth == 0 and key in skip_top:
                continue
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    _check_text(item, (key, trail))
            elif kind is dict or kind is list:
                stack.append((item, depth + 1, (key, trail)))
            if type(key) is str and not key.isascii():
                _check_text(key, (key, trail))


def _unwind(trail: Any) -> list[str | int]:
    parts: list[str | int] = []
    while trail is not None:
        key, trail = trail
        parts.append(key)
    return parts[::-1]


def _check_text(text: str, trail: Any) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FieldError(field_path(_unwind(trail)), f"contains a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X} "
                             f"at character {exc.start}), which is not valid Unicode text") from None


def check_json_text_depth(text: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """For fields that carry JSON inside a string (tool-call `arguments`): the same depth bound on
    what they parse to, so a renderer that walks the parsed value cannot recurse without end.
    Text that is not JSON is left to the field's own handling."""
    if "[" not in text and "{" not in text:
        return
    try:
        parsed = json.loads(text)
    except RecursionError:
        raise ValueError(f"nests deeper than {max_depth} levels") from None
    except ValueError:
        return
    try:
        check_json(parsed, max_depth=max_depth)
    except FieldError as exc:
        raise ValueError(str(exc)) from None


def as_float32(value: float) -> float:
    """`value` rounded to float32, the precision the sampler computes in."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def check_float32(value: float | None) -> float | None:
    """A float field's value, refused when float32 cannot hold it: non-finite, overflowing, or a
    nonzero value that rounds to zero or a subnormal (e.g. repetition_penalty 1e-300 passes a
    float64 `> 0` check but is 0 in float32: the sampler would divide by zero and emit NaN
    logits). The value itself is kept (the sampler rounds it the same way)."""
    if value is None:
        return None
    f32 = as_float32(value)
    if not math.isfinite(f32):
        raise ValueError(f"{value!r} is not a finite float32 number")
    if value != 0 and abs(f32) < FLOAT32_TINY:
        raise ValueError(f"{value!r} is too small for float32, the precision sampling uses "
                         f"(nonzero values must be at least {FLOAT32_TINY:.3g} in magnitude)")
    return value


class CheckedBody(BaseModel):
    """Base of every request body: the raw JSON passes check_json before any field is validated
    (the renderers, tokenizers and grammar compiler downstream can then trust it)."""

    @model_validator(mode="before")
    @classmethod
    def _raw_json_is_sane(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_json(data, skip_top=_ADMISSION_FIELDS)
        return data
