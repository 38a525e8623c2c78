"""Lark grammars for response_format: a JSON object, or JSON that follows a JSON schema."""

from __future__ import annotations

import copy
import json
from typing import Any, Sequence

from gemmaserve.structured.compiler import SchemaError

# Whitespace between two JSON tokens: nothing, one space, or one newline plus indentation, which
# is all that compact or pretty-printed JSON needs. Bounded, so a weak or random model cannot spend
# its budget on blanks (random weights like "\n" and "\t" tokens a lot).
JSON_WHITESPACE = r"(?:[ ]?|\n[ \t]{0,32})"

# Keywords that hold subschemas, by shape; the strict pass walks them.
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")


def end_rule(end_ids: Sequence[int]) -> str:
    """`end: <[a]> | <[b]>`: the turn-ending special tokens that close a structured answer."""
    if not end_ids:
        raise ValueError("a structured grammar needs at least one end token")
    return "end: " + " | ".join(f"<[{int(i)}]>" for i in end_ids) + "\n"


def json_schema_lark(schema: Any, *, strict: bool, end_ids: Sequence[int]) -> str:
    """A Lark grammar: one JSON value following `schema`, then one end token.

    strict=True: unsupported keywords are an error (SchemaError) and objects that do not say
    otherwise and list `properties` get additionalProperties=false (OpenAI's strict mode requires that anyway; any output
    valid under the tightened schema is valid under the original). strict=False: unknown keywords
    and formats are ignored, the schema is otherwise followed as written.
    """
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise SchemaError("response_format.json_schema.schema must be a JSON object")
    schema = copy.deepcopy(schema)
    schema.pop("x-guidance", None)  # options are ours to set, not the client's
    if strict:
        _close_objects(schema)
    schema["x-guidance"] = {"whitespace_pattern": JSON_WHITESPACE, "lenient": not strict}
    try:
        body = json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # NaN/Infinity inside the schema
        raise SchemaError(f"invalid JSON schema: {exc}") from None
    return f"start: body end\nbody: %json {body}\n" + end_rule(end_ids)


def json_object_lark(*, end_ids: Sequence[int]) -> str:
    """A Lark grammar: any JSON object, then one end token."""
    return json_schema_lark({"type": "object"}, strict=False, end_ids=end_ids)


def _close_objects(schema: Any) -> None:
    """Set additionalProperties=false on every object schema that leaves it open, in place."""
    if not isinstance(schema, dict):
        return
    # Only objects that list properties: a bare {"type": "object"} stays a free-form object.
    if "properties" in schema and "additionalProperties" not in schema and "patternProperties" not in schema:
        schema["additionalProperties"] = False
    for key in _SCHEMA_MAPS:
        sub = schema.get(key)
        if isinstance(sub, dict):
            for value in sub.values():
                _close_objects(value)
    for key in _SCHEMA_LISTS:
        sub = schema.get(key)
        if isinstance(sub, list):
            for value in sub:
                _close_objects(value)
    for key in _SCHEMA_ONE:
        _close_objects(schema.get(key))
