"""Lark grammars for forced Gemma 4 tool calls: `<|tool_call>call:NAME{k:v,...}<tool_call|>`.

Argument values follow each tool's JSON schema in Gemma's own syntax (spec §6.4/§6.5/§6.8):
strings are `<|"|>text<|"|>`, numbers and true/false/null are bare, objects are `{k:v,...}` with
bare keys, arrays are `[v,...]`. Object keys come out in sorted order (the chat template renders
them sorted, so that is what the model saw in training); required keys are always present.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from gemmaserve.structured.compiler import SchemaError
from gemmaserve.structured.json_grammar import end_rule
from gemmaserve.structured.number_ranges import UINT, UNUM, integer_regex, number_regex

_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Text inside <|"|>...<|"|> may not spell a marker-like `<|` or `|>`: decoded output is parsed as
# text, and a string that spelled `<|"|>` (or `<tool_call|>`) with ordinary tokens would end early.
_NO_MARKER = r"~/(?s:.*)(<\||\|>)(?s:.*)/"
_MAX_REPEAT = 64  # min/maxItems beyond this are not enforced (the grammar would grow too large)


def lark_literal(text: str) -> str:
    """A Lark string literal matching `text` exactly (JSON escaping is valid Lark escaping)."""
    return json.dumps(text, ensure_ascii=False)


class GemmaValueGrammar:
    """Turns JSON schemas into Lark rules for values in Gemma's tool-call syntax.

    `value(schema, root)` returns a Lark expression and adds the rules it needs; `rules()` returns
    all of them (the shared primitives included). `$ref`s resolve against `root` (local pointers
    only); recursive schemas become recursive rules.
    """

    def __init__(self, string_delim_id: int) -> None:
        self._d = f"<[{int(string_delim_id)}]>"
        self._rules: list[str] = []
        self._count = 0
        self._refs: dict[tuple[int, str], str] = {}

    def rules(self) -> str:
        d = self._d
        common = [
            f"gstr: {d} GTEXT? {d}",
            f"GTEXT: /(?s:.+)/ & {_NO_MARKER}",
            # Digit caps (number_ranges): a weak model cannot run digits until max_tokens.
            f"GINT: /-?{UINT}/",
            f"GNUM: /-?{UNUM}/",
            "GKEY: /[A-Za-z_][A-Za-z0-9_]*/",
            'gbool: "true" | "false"',
            "gany: gstr | GNUM | gbool | \"null\" | ganyobj | ganyarr",
            'ganyobj: "{" (GKEY ":" gany ("," GKEY ":" gany)*)? "}"',
            'ganyarr: "[" (gany ("," gany)*)? "]"',
        ]
        return "\n".join(common + self._rules) + "\n"

    def _new_rule(self, hint: str) -> str:
        self._count += 1
        return f"g{self._count}_{hint}"

    # -- schemas -------------------------------------------------------------------------------
    def value(self, schema: Any, root: Any) -> str:
        """Lark expression for one value that satisfies `schema`."""
        if schema is True or schema == {} or schema is None:
            return "gany"
        if schema is False:
            raise SchemaError("a schema of `false` allows no value")
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object, got {type(schema).__name__}")
        if "$ref" in schema:
            return self._ref(schema["$ref"], root)
        if "const" in schema:
            return self.literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError("`enum` must be a non-empty array")
            return "(" + " | ".join(self.literal(v) for v in values) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = schema[key]
                if not isinstance(subs, list) or not subs:
                    raise SchemaError(f"`{key}` must be a non-empty array")
                return "(" + " | ".join(self.value(s, root) for s in subs) + ")"
        if "allOf" in schema:
            return self.value(_merge_all_of(schema), root)
        types = schema.get("type")
        if types is None:
            types = _infer_type(schema)
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types:
            raise SchemaError(f"invalid `type`: {schema.get('type')!r}")
        alts = [self._typed(t, schema, root) for t in types]
        if schema.get("nullable") is True and "null" not in types:
            alts.append('"null"')
        return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"

    def _typed(self, type_name: Any, schema: dict, root: Any) -> str:
        if type_name == "string":
            return self._string(schema)
        if type_name == "integer":
            return "GINT" if not _bounded(schema) else self._number_rule("int", integer_regex(schema))
        if type_name == "number":
            return "GNUM" if not _bounded(schema) else self._number_rule("num", number_regex(schema))
        if type_name == "boolean":
            return "gbool"
        if type_name == "null":
            return '"null"'
        if type_name == "object":
            return self._object(schema, root)
        if type_name == "array":
            return self._array(schema, root)
        if type_name is None or type_name == "any":
            return "gany"
        raise SchemaError(f"unknown JSON schema type {type_name!r}")

    def _string(self, schema: dict) -> str:
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        pattern = schema.get("pattern")
        if lo is None and hi is None and pattern is None:
            return "gstr"
        name = self._new_rule("str").upper()  # a terminal: special tokens stay outside it
        parts = []
        if lo is not None or hi is not None:
            lo_n, hi_n = int(lo or 0), ("" if hi is None else int(hi))
            if hi_n != "" and hi_n < lo_n:
                raise SchemaError("string maxLength is below minLength")
            parts.append(f"/(?s:.{{{lo_n},{hi_n}}})/")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise SchemaError("string `pattern` must be a string")
            parts.append("/" + _pattern_regex(pattern) + "/")
        self._rules.append(f"{name}: " + " & ".join(parts + [_NO_MARKER]))
        rule = name.lower() + "_s"
        self._rules.append(f"{rule}: {self._d} {name} {self._d}")  # the regex decides if "" is allowed
        return rule

    def _object(self, schema: dict, root: Any) -> str:
        props = schema.get("properties") or {}
        if not isinstance(props, dict):
            raise SchemaError("`properties` must be an object")
        required = schema.get("required") or []
        if not isinstance(required, list):
            raise SchemaError("`required` must be an array")
        props = dict(props)
        for name in required:  # required but undeclared: any value will do
            props.setdefault(name, {})
        rule = self._new_rule("obj")
        if not props:
            extra = schema.get("additionalProperties", True)
            if extra is False:
                self._rules.append(f'{rule}: "{{" "}}"')
            else:
                value = "gany" if extra is True else self.value(extra, root)
                self._rules.append(f'{rule}: "{{" (GKEY ":" {value} ("," GKEY ":" {value})*)? "}}"')
            return rule
        names = sorted(props)
        kvs = [f"{self._key(n)} \":\" {self.value(props[n], root)}" for n in names]
        # first[i]: keys i.. with none written yet; rest[i]: keys i.. after at least one (comma first).
        # None stands for "nothing left"; optional keys may be skipped, required ones may not.
        first: list[str | None] = [None] * (len(names) + 1)
        rest: list[str | None] = [None] * (len(names) + 1)
        for i in range(len(names) - 1, -1, -1):
            req = names[i] in required
            tail = f" {rest[i + 1]}" if rest[i + 1] else ""
            with_comma = f'"," {kvs[i]}{tail}'
            rest_body = with_comma if req else (
                f"({with_comma} | {rest[i + 1]})" if rest[i + 1] else f"({with_comma})?"
            )
            first_body = f"{kvs[i]}{tail}" if req else (
                f"({kvs[i]}{tail} | {first[i + 1]})" if first[i + 1] else f"({kvs[i]}{tail})?"
            )
            rest[i] = f"{rule}_r{i}"
            first[i] = f"{rule}_f{i}"
            self._rules.append(f"{rest[i]}: {rest_body}")
            self._rules.append(f"{first[i]}: {first_body}")
        self._rules.append(f'{rule}: "{{" {first[0]} "}}"')
        return rule

    def _array(self, schema: dict, root: Any) -> str:
        item = self.value(schema.get("items", True), root)
        lo = int(schema.get("minItems") or 0)
        hi = schema.get("maxItems")
        hi = None if hi is None or int(hi) > _MAX_REPEAT else int(hi)
        lo = min(lo, _MAX_REPEAT)
        if hi is not None and hi < lo:
            raise SchemaError("array maxItems is below minItems")
        rule = self._new_rule("arr")
        if hi == 0:
            body = '"[" "]"'
        else:
            more = "*" if hi is None else f"{{{max(lo - 1, 0)},{hi - 1}}}"
            if hi is None and lo > 1:
                more = f"{{{lo - 1},}}"
            seq = f'{item} ("," {item}){more}'
            body = f'"[" {seq} "]"' if lo >= 1 else f'"[" ({seq})? "]"'
        self._rules.append(f"{rule}: {body}")
        return rule

    def _number_rule(self, hint: str, regex: str) -> str:
        """A terminal for a bounded number (one lexeme: the digits cannot be split by the parser)."""
        name = self._new_rule(hint).upper()
        self._rules.append(f"{name}: /{regex}/")
        return name

    def _key(self, name: str) -> str:
        if _BARE_KEY.fullmatch(name):
            return lark_literal(name)
        return f"{self._d} {lark_literal(name)} {self._d}"  # keys that are not identifiers go quoted

    def _ref(self, ref: Any, root: Any) -> str:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local $ref pointers are supported, got {ref!r}")
        key = (id(root), ref)
        if key in self._refs:
            return self._refs[key]
        target = _resolve_pointer(root, ref)
        rule = self._new_rule("ref")
        self._refs[key] = rule  # before expanding: recursive schemas refer back to this rule
        self._rules.append(f"{rule}: {self.value(target, root)}")
        return rule

    # -- literals ------------------------------------------------------------------------------
    def literal(self, value: Any) -> str:
        """Lark expression for exactly `value` written in Gemma syntax."""
        if isinstance(value, bool):
            return '"true"' if value else '"false"'
        if value is None:
            return '"null"'
        if isinstance(value, str):
            return f"{self._d} {lark_literal(value)} {self._d}" if value else f"{self._d} {self._d}"
        if isinstance(value, (int, float)):
            return lark_literal(json.dumps(value))
        if isinstance(value, list):
            inner = ' "," '.join(self.literal(v) for v in value)
            return f'"[" {inner} "]"' if value else '"[" "]"'
        if isinstance(value, dict):
            items = [f'{self._key(str(k))} ":" {self.literal(value[k])}' for k in sorted(value)]
            return '"{" ' + ' "," '.join(items) + ' "}"' if items else '"{" "}"'
        raise SchemaError(f"unsupported literal {value!r}")


def tool_call_lark(
    tools: Sequence[tuple[str, Any]],
    *,
    parallel: bool,
    markers: Any,
    end_ids: Sequence[int],
    text_end_ids: Sequence[int] | None = None,
) -> str:
    """Lark grammar: one (or, with `parallel`, one or more) calls of the given (name, parameters
    schema) tools, then one end token. `markers` is the compiler's MarkerIds. A parameters schema
    of None means no arguments; the string "any" means any Gemma object (a tool whose arguments
    are not enforced). With `text_end_ids` (tool_choice "auto") the answer may instead be plain
    text ended by one of those ids, and text may also come before the calls."""
    if not tools:
        raise SchemaError("no tool to call")
    g = GemmaValueGrammar(markers.string_delim)
    bodies = []
    for name, params in tools:
        try:
            args = "ganyobj" if params == "any" else g.value(_object_schema(params), params)
        except SchemaError as exc:
            raise SchemaError(f"tool {name!r}: {exc}") from None
        bodies.append(f"{lark_literal(name)} {args}")
    head = ["start: calls end"]
    if text_end_ids is not None:
        # Special tokens are never part of a text lexeme, so the text ends where a call opens; the
        # text may not spell the opener with ordinary tokens either (the parser reads decoded text
        # and would take it for an unconstrained call).
        ends = " | ".join(f"<[{int(i)}]>" for i in text_end_ids)
        head = ["start: ANSWER? calls end | ANSWER? textend", r"ANSWER: /(?s:.+)/ & ~/(?s:.*)<\|tool_call>(?s:.*)/",
                f"textend: {ends}"]
    head += [
        "calls: call+" if parallel else "calls: call",
        f'call: <[{markers.tool_call_start}]> "call:" callbody <[{markers.tool_call_end}]>',
        "callbody: " + " | ".join(bodies),
    ]
    return "\n".join(head) + "\n" + end_rule(end_ids) + g.rules()


def _object_schema(params: Any) -> Any:
    """A tool's `parameters`; none means the function takes no arguments."""
    if params is None:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    if not isinstance(params, dict):
        raise SchemaError("`parameters` must be a JSON schema object")
    if "type" not in params and "$ref" not in params and "anyOf" not in params:
        params = {**params, "type": "object"}
    return params


def _infer_type(schema: dict) -> str | None:
    if "properties" in schema or "additionalProperties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "minItems" in schema or "maxItems" in schema:
        return "array"
    if "minLength" in schema or "maxLength" in schema or "pattern" in schema:
        return "string"
    return None


def _bounded(schema: dict) -> bool:
    return any(schema.get(k) is not None for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))


def _merge_all_of(schema: dict) -> dict:
    """allOf as one schema: sibling keywords, then each part; properties and required are unioned."""
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if not isinstance(part, dict):
            raise SchemaError("`allOf` entries must be objects")
        for k, v in part.items():
            if k == "properties":
                merged["properties"] = {**merged.get("properties", {}), **v}
            elif k == "required":
                merged["required"] = sorted(set(merged.get("required", [])) | set(v))
            else:
                merged.setdefault(k, v)
    return merged


def _resolve_pointer(root: Any, ref: str) -> Any:
    node = root
    for raw in ref[1:].split("/")[1:] if ref != "#" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaError(f"$ref {ref!r} points nowhere")
    return node


def _pattern_regex(pattern: str) -> str:
    """A JSON-schema `pattern` (a search, not a full match) as a whole-string regex."""
    body = pattern
    start = body.startswith("^")
    end = body.endswith("$") and not body.endswith("\\$")
    body = body[1 if start else 0 : len(body) - (1 if end else 0)]
    body = body.replace("/", "\\/")
    return ("" if start else "(?s:.*)") + f"(?:{body})" + ("" if end else "(?s:.*)")
