"""Shared constants and a JSON-schema checker for the structured tests.

A module of its own (not conftest.py): `from conftest import ...` resolves to whichever test
directory's conftest pytest loaded last (tests/api's when both folders are collected)."""

from __future__ import annotations

VOCAB = 512  # the tiny demo model's vocabulary: control tokens at Gemma's ids, bytes, BPE pieces
STOP_IDS = (1, 106, 50)  # <eos>, <turn|>, <|tool_response>: the engine stops on these


def validate(value, schema, root=None) -> list[str]:
    """Errors of `value` against the JSON-schema subset these tests use (empty list = valid)."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return []
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#").split("/")[1:]:
            node = node[part]
        return validate(value, node, root)
    if "const" in schema:
        return [] if _same(value, schema["const"]) else [f"{value!r} != const {schema['const']!r}"]
    if "enum" in schema:
        return [] if any(_same(value, v) for v in schema["enum"]) else [f"{value!r} not in enum"]
    if "anyOf" in schema:
        return [] if any(not validate(value, s, root) for s in schema["anyOf"]) else [f"{value!r} matches no anyOf"]
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if schema.get("nullable"):
            types.append("null")
        if not any(_is_type(value, t) for t in types):
            return [f"{value!r} is not of type {types}"]
    errors: list[str] = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, ok in (("minimum", lambda b: value >= b), ("maximum", lambda b: value <= b),
                        ("exclusiveMinimum", lambda b: value > b), ("exclusiveMaximum", lambda b: value < b)):
            if isinstance(schema.get(key), (int, float)) and not isinstance(schema.get(key), bool) and not ok(schema[key]):
                errors.append(f"{value!r} violates {key} {schema[key]!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 10**9):
            errors.append(f"{value!r} has a bad length")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"missing required {name!r}")
        for name, v in value.items():
            if name in props:
                errors += validate(v, props[name], root)
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"unexpected property {name!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(v, schema["additionalProperties"], root)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 10**9):
            errors.append(f"array of {len(value)} items violates min/maxItems")
        for v in value:
            errors += validate(v, schema.get("items", {}), root)
    return errors


def _is_type(value, t: str) -> bool:
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "object": dict, "array": list}[t])


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b
