"""response_format constraints: a random model always produces JSON that parses and validates."""

import json

import pytest

from gemmaserve.structured import SchemaError, json_object_constraint, json_schema_constraint

SEEDS = range(12)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
        "nickname": {"type": ["string", "null"], "maxLength": 8},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "integer"},
                "geo": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                    "required": ["lat", "lon"],
                    "additionalProperties": False,
                },
            },
            "required": ["city", "geo"],
            "additionalProperties": False,
        },
        "nothing": {"type": "null"},
    },
    "required": ["name", "age", "active", "role", "address", "nothing"],
    "additionalProperties": False,
}


def _answer(tokenizer, ids, end_ids=(106, 1)):
    """The decoded answer without its end token; the end token must be one of `end_ids`."""
    assert ids[-1] in end_ids, ids[-1]
    return tokenizer.decode(ids[:-1])


@pytest.mark.parametrize("seed", SEEDS)
def test_json_object_always_parses_to_an_object(compiler, tokenizer, generate, seed):
    ids = generate(json_object_constraint(compiler), seed)
    value = json.loads(_answer(tokenizer, ids))
    assert isinstance(value, dict)


@pytest.mark.parametrize("seed", SEEDS)
def test_nested_schema_output_validates(compiler, tokenizer, generate, schema_errors, seed):
    ids = generate(json_schema_constraint(compiler, PERSON, strict=True), seed)
    value = json.loads(_answer(tokenizer, ids))
    assert schema_errors(value, PERSON) == []
    assert set(value) <= set(PERSON["properties"])


def test_strict_closes_objects_without_additional_properties(compiler, tokenizer, generate):
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}}
    for seed in range(8):
        value = json.loads(_answer(tokenizer, generate(json_schema_constraint(compiler, schema, strict=True), seed)))
        assert set(value) <= {"a"}
        assert all(isinstance(v, bool) for v in value.values())


def test_arrays_enums_refs_and_any_of(compiler, tokenizer, generate, schema_errors):
    schema = {
        "type": "object",
        "$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 3},
            "mode": {"anyOf": [{"const": "fast"}, {"type": "integer"}]},
            "level": {"enum": [1, 2, 3]},
        },
        "required": ["items", "mode", "level"],
    }
    for seed in range(8):
        value = json.loads(_answer(tokenizer, generate(json_schema_constraint(compiler, schema, strict=True), seed)))
        assert schema_errors(value, schema) == []
        assert 1 <= len(value["items"]) <= 3


def test_top_level_array_schema(compiler, tokenizer, generate):
    schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 4}
    for seed in range(6):
        value = json.loads(_answer(tokenizer, generate(json_schema_constraint(compiler, schema, strict=False), seed)))
        assert isinstance(value, list) and len(value) <= 4
        assert all(type(v) is int for v in value)


def test_first_token_must_open_the_object(compiler, tokenizer):
    import torch

    constraint = json_object_constraint(compiler)
    logits = torch.zeros(tokenizer.vocab_size)
    constraint.mask_logits([], logits)
    allowed = torch.nonzero(torch.isfinite(logits)).flatten().tolist()
    # Every allowed first token is ordinary text starting with "{", no special token, no end token.
    assert allowed and all(tokenizer.decode([i]).startswith("{") for i in allowed)


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "foo"}, "Invalid type"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "does not exist"),
        ({"type": "object", "required": ["x"], "additionalProperties": False}, "unsatisfiable"),
        ("not a schema", "must be a JSON object"),
        ({"type": "string", "pattern": "("}, "unclosed group"),
    ],
)
def test_invalid_schema_raises_schema_error(compiler, schema, message):
    with pytest.raises(SchemaError, match=message) as info:
        json_schema_constraint(compiler, schema, strict=False)
    assert isinstance(info.value, ValueError)
    assert "%json" not in str(info.value) and " | " not in str(info.value)  # no grammar excerpt


def test_strict_rejects_unsupported_keywords_lenient_ignores_them(compiler, tokenizer, generate):
    schema = {"type": "object", "properties": {"when": {"type": "string", "format": "no-such-format"}}}
    with pytest.raises(SchemaError, match="Unknown format"):
        json_schema_constraint(compiler, schema, strict=True)
    value = json.loads(_answer(tokenizer, generate(json_schema_constraint(compiler, schema, strict=False), 0)))
    assert isinstance(value, dict)


def test_client_x_guidance_options_are_ignored(compiler, tokenizer, generate):
    # A client must not turn off our whitespace bound or leniency through the schema.
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "x-guidance": {"whitespace_pattern": "[ ]*", "lenient": True}}
    value = json.loads(_answer(tokenizer, generate(json_schema_constraint(compiler, schema, strict=True), 3)))
    assert list(value) == ["a"]
