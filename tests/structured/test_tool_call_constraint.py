"""Forced Gemma 4 tool calls: a random model always emits well-formed calls of allowed tools."""

import json
import re

import pytest
import torch

from gemmaserve.structured import SchemaError, tool_call_constraint

D = '<|"|>'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "days": {"type": "integer"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {
                    "filters": {
                        "type": "object",
                        "properties": {"lang": {"type": "string", "maxLength": 4}, "max": {"type": "number"}},
                        "required": ["lang"],
                    },
                    "flag": {"type": "boolean", "nullable": True},
                    "query": {"type": "string", "maxLength": 10},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
                    "mode": {"type": ["integer", "null"]},
                },
                "required": ["query", "filters"],
            },
        },
    },
    {"type": "function", "function": {"name": "ping"}},  # no parameters: called with {}
]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object", "properties": {}}) for t in TOOLS}


class GemmaSyntax:
    """A strict reader of `<|tool_call>call:NAME{k:v,...}<tool_call|>` (spec §6.5/§6.8), independent
    of the grammar code: it returns [(name, arguments dict)] or raises ValueError."""

    NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
    KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

    def __init__(self, text: str):
        self.s, self.i = text, 0

    def calls(self) -> list:
        out = []
        while self.s.startswith("<|tool_call>", self.i):
            self.i += len("<|tool_call>")
            self.expect("call:")
            m = re.compile(r"[A-Za-z0-9_\-.]+").match(self.s, self.i)
            if not m:
                raise ValueError(f"no name at {self.i}")
            self.i = m.end()
            args = self.obj()
            self.expect("<tool_call|>")
            out.append((m.group(), args))
        if self.i != len(self.s) or not out:
            raise ValueError(f"trailing text at {self.i}: {self.s[self.i:self.i + 40]!r}")
        return out

    def expect(self, lit: str):
        if not self.s.startswith(lit, self.i):
            raise ValueError(f"expected {lit!r} at {self.i}: {self.s[self.i:self.i + 40]!r}")
        self.i += len(lit)

    def obj(self) -> dict:
        self.expect("{")
        out = {}
        while not self.s.startswith("}", self.i):
            if out:
                self.expect(",")
            if self.s.startswith(D, self.i):
                key = self.string()
            else:
                m = self.KEY.match(self.s, self.i)
                if not m:
                    raise ValueError(f"bad key at {self.i}")
                key, self.i = m.group(), m.end()
            self.expect(":")
            if key in out:
                raise ValueError(f"duplicate key {key}")
            out[key] = self.value()
        self.i += 1
        return out

    def string(self) -> str:
        self.expect(D)
        end = self.s.index(D, self.i)
        text, self.i = self.s[self.i:end], end + len(D)
        return text

    def value(self):
        s = self.s
        if s.startswith(D, self.i):
            return self.string()
        if s.startswith("{", self.i):
            return self.obj()
        if s.startswith("[", self.i):
            self.i += 1
            out = []
            while not s.startswith("]", self.i):
                if out:
                    self.expect(",")
                out.append(self.value())
            self.i += 1
            return out
        for lit, val in (("true", True), ("false", False), ("null", None)):
            if s.startswith(lit, self.i):
                self.i += len(lit)
                return val
        m = self.NUMBER.match(s, self.i)
        if not m:
            raise ValueError(f"bad value at {self.i}: {s[self.i:self.i + 20]!r}")
        self.i = m.end()
        return json.loads(m.group())


def _calls(tokenizer, ids):
    assert ids[-1] in (50, 106, 1), ids[-1]
    return GemmaSyntax(tokenizer.decode(ids[:-1])).calls()


@pytest.mark.parametrize("seed", range(16))
def test_required_yields_valid_calls_of_declared_tools(compiler, tokenizer, generate, schema_errors, seed):
    ids = generate(tool_call_constraint(compiler, TOOLS, "required", parallel=True), seed)
    calls = _calls(tokenizer, ids)
    for name, args in calls:
        assert name in SCHEMAS
        assert schema_errors(args, SCHEMAS[name]) == []
        assert set(args) <= set(SCHEMAS[name].get("properties", {}))
        assert list(args) == sorted(args)  # the chat template's key order


def test_named_choice_calls_only_that_tool(compiler, tokenizer, generate, schema_errors):
    mode = {"type": "function", "function": {"name": "search"}}
    for seed in range(8):
        calls = _calls(tokenizer, generate(tool_call_constraint(compiler, TOOLS, mode, parallel=False), seed))
        assert len(calls) == 1
        name, args = calls[0]
        assert name == "search" and schema_errors(args, SCHEMAS["search"]) == []
        assert "query" in args and "lang" in args["filters"]


def test_not_parallel_means_exactly_one_call(compiler, tokenizer, generate):
    counts = {len(_calls(tokenizer, generate(tool_call_constraint(compiler, TOOLS, "required", parallel=False), s)))
              for s in range(10)}
    assert counts == {1}


def test_parallel_allows_several_calls(compiler, tokenizer, generate):
    counts = [len(_calls(tokenizer, generate(tool_call_constraint(compiler, TOOLS, "required", parallel=True), s)))
              for s in range(16)]
    assert max(counts) > 1 and min(counts) >= 1


def test_call_is_framed_by_special_tokens_and_ends_the_turn(compiler, tokenizer, generate):
    ids = generate(tool_call_constraint(compiler, TOOLS, {"name": "ping"}, parallel=False), 0)
    # <|tool_call> is the special id 48 (not text), then "call:ping{}", then 49 and an end id.
    assert ids[0] == 48 and ids[-2] == 49 and ids[-1] in (50, 106, 1)
    assert tokenizer.decode(ids[1:-2]) == "call:ping{}"


def test_first_token_is_forced_to_open_a_call(compiler, tokenizer):
    logits = torch.zeros(tokenizer.vocab_size)
    tool_call_constraint(compiler, TOOLS, "required").mask_logits([], logits)
    assert torch.isfinite(logits).nonzero().flatten().tolist() == [48]


def test_string_values_never_spell_markers(compiler, tokenizer, generate):
    schema = [{"type": "function", "function": {"name": "echo", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}]
    for seed in range(6):
        ids = generate(tool_call_constraint(compiler, schema, "required", parallel=False), seed)
        (name, args), = _calls(tokenizer, ids)
        assert "<|" not in args["text"] and "|>" not in args["text"]


def test_keys_that_are_not_identifiers_are_quoted(compiler, tokenizer, generate):
    tools = [{"type": "function", "function": {"name": "h", "parameters": {
        "type": "object", "properties": {"content-type": {"enum": ["a", "b"]}}, "required": ["content-type"]}}}]
    text = tokenizer.decode(generate(tool_call_constraint(compiler, tools, "required", parallel=False), 0)[:-1])
    assert re.fullmatch(r'<\|tool_call>call:h\{<\|"\|>content-type<\|"\|>:<\|"\|>[ab]<\|"\|>\}<tool_call\|>', text)


def test_recursive_and_any_typed_arguments(compiler, tokenizer, generate, schema_errors):
    tree = {
        "type": "object",
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["v"]}},
        "properties": {"root": {"$ref": "#/$defs/node"}, "meta": {}},
        "required": ["root"],
    }
    tools = [{"type": "function", "function": {"name": "tree", "parameters": tree}}]
    for seed in range(6):
        (name, args), = _calls(tokenizer, generate(tool_call_constraint(compiler, tools, "required", parallel=False), seed))
        assert schema_errors(args, tree) == []


def test_string_pattern_lengths_const_allof_and_bounds(compiler, tokenizer, generate):
    params = {
        "allOf": [
            {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"}}, "required": ["code"]},
            {"properties": {"kind": {"const": "fixed"}, "n": {"type": "integer", "minimum": 0},
                            "word": {"type": "string", "minLength": 2, "maxLength": 3},
                            "xs": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2}},
             "required": ["kind", "n", "word", "xs"]},
        ]
    }
    tools = [{"type": "function", "function": {"name": "f", "parameters": params}}]
    for seed in range(8):
        (name, args), = _calls(tokenizer, generate(tool_call_constraint(compiler, tools, "required", parallel=False), seed))
        assert re.fullmatch(r"[A-Z]{2}[0-9]{2}", args["code"])
        assert args["kind"] == "fixed" and type(args["n"]) is int and args["n"] >= 0
        assert 2 <= len(args["word"]) <= 3
        assert len(args["xs"]) == 2 and all(type(x) is bool for x in args["xs"])
        assert list(args) == ["code", "kind", "n", "word", "xs"]


def test_numbers_are_bounded_in_length(compiler, tokenizer):
    """At most 19 integer digits: after 19 digits only a closer may follow, never another digit."""
    tools = [{"type": "function", "function": {"name": "n", "parameters": {
        "type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"]}}}]
    c = tool_call_constraint(compiler, tools, "required", parallel=False)
    ids = [48] + tokenizer.encode("call:n{v:") + tokenizer.encode("1" * 19)
    logits = torch.zeros(tokenizer.vocab_size)
    c.mask_logits(ids, logits)
    allowed = [tokenizer.decode([i]) for i in torch.isfinite(logits).nonzero().flatten().tolist()]
    assert allowed and all(not t[:1].isdigit() for t in allowed)
    assert "}" in allowed


def test_unknown_named_tool_and_bad_schemas_raise_schema_error(compiler):
    with pytest.raises(SchemaError, match="not among"):
        tool_call_constraint(compiler, TOOLS, {"name": "nope"})
    with pytest.raises(SchemaError, match="no function tools"):
        tool_call_constraint(compiler, [], "required")
    bad = [{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "properties": {"a": {"type": "wat"}}}}}]
    with pytest.raises(SchemaError, match="tool 'x'.*unknown JSON schema type"):
        tool_call_constraint(compiler, bad, "required")


def test_output_parses_with_chat_parser(compiler, tokenizer, generate, schema_errors):
    """CHAT's own parser (the one the API uses) turns every forced call into valid JSON arguments."""
    parser = pytest.importorskip("gemmaserve.chat.parser")
    for seed in range(12):
        ids = generate(tool_call_constraint(compiler, TOOLS, "required", parallel=True), seed)
        parsed = parser.parse_output(tokenizer.decode(ids), tools=TOOLS)
        expected = _calls(tokenizer, ids)
        assert [c.name for c in parsed.tool_calls] == [n for n, _ in expected]
        for call, (_, args) in zip(parsed.tool_calls, expected):
            assert json.loads(call.arguments) == args
            assert schema_errors(json.loads(call.arguments), SCHEMAS[call.name]) == []


BOUNDED = {
    "a": {"type": "integer", "minimum": 1, "maximum": 9},
    "b": {"type": "integer", "minimum": -50, "exclusiveMaximum": 1200},
    "c": {"type": "number", "minimum": -2, "maximum": 10},
    "d": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "e": {"type": "integer", "maximum": -3},
}


def _in_bounds(text: str, schema: dict) -> bool:
    from fractions import Fraction

    v = Fraction(text)
    checks = {"minimum": v.__ge__, "maximum": v.__le__, "exclusiveMinimum": v.__gt__, "exclusiveMaximum": v.__lt__}
    return all(checks[k](Fraction(schema[k])) for k in checks if k in schema)


def test_integer_and_number_bounds_hold_under_random_logits(compiler, tokenizer, generate):
    """{"type":"integer","minimum":1,"maximum":9} once gave 8377206: bounds are now in the grammar.
    Values are checked exactly from the text (Fraction), over many seeds of a random model."""
    tools = [{"type": "function", "function": {"name": "r", "parameters": {
        "type": "object", "properties": BOUNDED, "required": sorted(BOUNDED)}}}]
    constraint = tool_call_constraint(compiler, tools, "required", parallel=False)
    number = r"(-?[0-9]+(?:\.[0-9]+)?)"
    pattern = re.compile(r"<\|tool_call>call:r\{" + ",".join(f"{k}:{number}" for k in sorted(BOUNDED)) + r"\}<tool_call\|>")
    seen = {k: set() for k in BOUNDED}
    for seed in range(40):
        ids = generate(constraint, seed, bias=0.0)  # no closer bias: digits as likely as anything
        text = tokenizer.decode(ids[:-1])
        m = pattern.fullmatch(text)
        assert m, text
        for key, value in zip(sorted(BOUNDED), m.groups()):
            assert _in_bounds(value, BOUNDED[key]), (key, value, BOUNDED[key])
            assert not re.match(r"-?0[0-9]", value)  # canonical integer part
            if BOUNDED[key]["type"] == "integer":
                assert "." not in value
            seen[key].add(value)
    assert all(len(v) > 3 for v in seen.values()), seen  # the model really chose among many values


def test_bounded_integers_allow_exactly_the_range(compiler, tokenizer):
    """After `call:r{v:` with minimum 27, maximum 315: each digit prefix allows exactly the digits
    that can still complete to a value in range."""
    tools = [{"type": "function", "function": {"name": "r", "parameters": {
        "type": "object", "properties": {"v": {"type": "integer", "minimum": 27, "maximum": 315}}, "required": ["v"]}}}]
    digit_ids = {d: tokenizer.token_to_id(d) for d in "0123456789"}
    assert None not in digit_ids.values()
    head = [48] + tokenizer.encode("call:r{v:")

    def allowed_digits(prefix: str) -> set[str]:
        c = tool_call_constraint(compiler, tools, "required", parallel=False)  # fresh state per prefix
        logits = torch.zeros(tokenizer.vocab_size)
        c.mask_logits(head + [digit_ids[ch] for ch in prefix], logits)
        return {d for d, i in digit_ids.items() if torch.isfinite(logits[i])}

    for prefix in ["", "2", "3", "31", "4", "27", "1", "10"]:
        want = {d for d in "0123456789" if any(27 <= int(prefix + d + tail) <= 315
                                               for tail in ["", "0", "9", "00", "99"]
                                               if len(prefix + d + tail) <= 3 and not (prefix + d).startswith("0"))}
        assert allowed_digits(prefix) == want, prefix


def test_number_bound_at_an_integer_checks_the_fraction(compiler, tokenizer):
    tools = [{"type": "function", "function": {"name": "r", "parameters": {
        "type": "object", "properties": {"v": {"type": "number", "maximum": 9}}, "required": ["v"]}}}]
    c = tool_call_constraint(compiler, tools, "required", parallel=False)
    head = [48] + tokenizer.encode("call:r{v:") + [tokenizer.token_to_id("9"), tokenizer.token_to_id(".")]
    logits = torch.zeros(tokenizer.vocab_size)
    c.mask_logits(head, logits)
    digits = {d for d in "0123456789" if torch.isfinite(logits[tokenizer.token_to_id(d)])}
    assert digits == {"0"}  # 9.0 and 9.00 are <= 9, 9.5 is not


def test_empty_numeric_range_is_a_schema_error(compiler):
    for schema in ({"type": "integer", "minimum": 5, "maximum": 4}, {"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 2},
                   {"type": "number", "minimum": 3, "exclusiveMaximum": 3}):
        tools = [{"type": "function", "function": {"name": "r", "parameters": {
            "type": "object", "properties": {"v": schema}, "required": ["v"]}}}]
        with pytest.raises(SchemaError, match="allow no value"):
            tool_call_constraint(compiler, tools, "required")
