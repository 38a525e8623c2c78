"""Constraint factories the API calls for response_format and forced tool calls."""

from __future__ import annotations

import json
from typing import Any, Literal, Mapping, Sequence

from llguidance.gbnf_to_lark import any_to_lark

from gemmaserve.structured.compiler import (
    GrammarCompiler,
    MarkerIds,
    SchemaError,
    as_compiler,
    check_grammar_size,
    check_schema_size,
)
from gemmaserve.structured.constraint import GrammarConstraint
from gemmaserve.structured.gemma_grammar import tool_call_lark
from gemmaserve.structured.json_grammar import end_rule, json_object_lark, json_schema_lark


def json_object_constraint(
    tokenizer: Any, start_after_thinking: bool = False, starts_in_reasoning: bool = False
) -> GrammarConstraint:
    """response_format {"type": "json_object"}: the answer is one JSON object, then `<turn|>`/`<eos>`.

    `tokenizer`: a GrammarCompiler (keep one per model: it caches the token trie and compiled
    grammars) or a gemmaserve Tokenizer / tokenizers.Tokenizer (builds a throwaway compiler).
    `start_after_thinking`: thinking is on, so the grammar starts after a leading thought channel.
    `starts_in_reasoning`: the prompt already opened that channel (an assistant prefill
    "<|channel>thought\n"), so the grammar starts after the first `<channel|>`.
    """
    compiler = as_compiler(tokenizer)
    ends = _answer_end_ids(compiler)
    return _constraint(compiler, json_object_lark(end_ids=ends), ends, start_after_thinking, starts_in_reasoning)


def json_schema_constraint(
    tokenizer: Any, schema: Any, strict: bool | None = False, start_after_thinking: bool = False,
    starts_in_reasoning: bool = False,
) -> GrammarConstraint:
    """response_format {"type": "json_schema"}: the answer is JSON valid under `schema`.

    Raises SchemaError (a ValueError with a user-facing message; the API answers 400) when the
    schema is invalid or, with strict=True, uses keywords that cannot be enforced.
    """
    compiler = as_compiler(tokenizer)
    check_schema_size(schema, "the JSON schema")
    ends = _answer_end_ids(compiler)
    grammar = json_schema_lark(schema, strict=bool(strict), end_ids=ends)
    return _constraint(compiler, grammar, ends, start_after_thinking, starts_in_reasoning)


def grammar_constraint(
    tokenizer: Any, grammar: str, start_after_thinking: bool = False, starts_in_reasoning: bool = False
) -> GrammarConstraint:
    """response_format {"type": "grammar", "grammar": ...} (OpenRouter's extension): the answer
    follows the client's grammar, GBNF (`root ::= ...`) or Lark (llguidance dialect), then
    `<turn|>`/`<eos>`. The client's grammar is compiled as its own named grammar inside ours, so
    its rule names cannot clash with the end rule. Raises SchemaError when it does not compile."""
    compiler = as_compiler(tokenizer)
    if not isinstance(grammar, str) or not grammar.strip():
        raise SchemaError("response_format.grammar must be a non-empty grammar")
    check_grammar_size(grammar)
    try:
        client = any_to_lark(grammar)
    except Exception as exc:  # the converter raises bare Exception too (e.g. an undefined rule)
        raise SchemaError(f"grammar does not parse: {exc}") from None
    ends = _answer_end_ids(compiler)
    top = json.dumps({"grammars": [{"lark_grammar": "start: @client end\n" + end_rule(ends)},
                                   {"name": "client", "lark_grammar": client}]})
    m = compiler.markers
    return GrammarConstraint(
        compiler.matcher(top, lark=False), compiler.vocab_size, end_ids=ends, thinking=start_after_thinking,
        channel_start_id=m.channel_start, channel_end_id=m.channel_end,
        thinking_blocked_ids=_thinking_blocked(m), starts_in_reasoning=starts_in_reasoning,
    )


def tool_call_constraint(
    tokenizer: Any,
    tools: Sequence[Mapping[str, Any]],
    mode: Literal["required", "auto"] | Mapping[str, Any] = "required",
    parallel: bool = True,
    start_after_thinking: bool = False,
    starts_in_reasoning: bool = False,
) -> GrammarConstraint:
    """tool_choice "required" or a named function: the answer is Gemma 4 tool-call syntax.

    Forces `<|tool_call>call:NAME{k:v,...}<tool_call|>` (one call, or one or more with `parallel`)
    with NAME one of `tools` (mode "required") or exactly the named one (mode {"name": NAME}, or
    the wire form {"type": "function", "function": {"name": NAME}}), arguments following that
    tool's `parameters` schema in Gemma syntax, then `<|tool_response>`, `<turn|>` or `<eos>`.
    `tools` are OpenAI wire tools ({"type": "function", "function": {...}}) or bare function dicts.
    Mode "auto" (tool_choice auto with `strict: true` tools) does not force a call: the answer is
    text, or text then calls; the arguments of strict tools follow their schema, other tools' any
    object. Raises SchemaError for a name not in tools or a schema that cannot be compiled (400).
    """
    compiler = as_compiler(tokenizer)
    declared = _tool_schemas(tools)
    check_schema_size([p for _, p in declared], "the tools' parameter schemas")
    m = compiler.markers
    ends = [m.tool_response_start, m.turn_end, m.eos]
    if mode == "auto":
        strict = _strict_names(tools)
        chosen = [(n, p if n in strict else "any") for n, p in declared]
        grammar = tool_call_lark(chosen, parallel=parallel, markers=m, end_ids=ends,
                                 text_end_ids=_answer_end_ids(compiler))
        return _constraint(compiler, grammar, ends, start_after_thinking, starts_in_reasoning)
    if mode == "required":
        chosen = declared
    else:
        name = _mode_name(mode)
        chosen = [(n, p) for n, p in declared if n == name]
        if not chosen:
            raise SchemaError(f"tool_choice names function {name!r}, which is not among the request's tools")
    grammar = tool_call_lark(chosen, parallel=parallel, markers=m, end_ids=ends)
    return _constraint(compiler, grammar, ends, start_after_thinking, starts_in_reasoning)


def _thinking_blocked(m: MarkerIds) -> list[int]:
    # Inside the thought: no turn end / stop token, and no tool call (the parsers would take
    # `<|tool_call>` as the end of the thought, unconstrained).
    return [m.eos, m.turn_end, m.tool_response_start, m.tool_call_start, m.tool_call_end]


def _constraint(
    compiler: GrammarCompiler, grammar: str, ends: list[int], thinking: bool, starts_in_reasoning: bool
) -> GrammarConstraint:
    m = compiler.markers
    return GrammarConstraint(
        compiler.matcher(grammar),
        compiler.vocab_size,
        end_ids=ends,
        thinking=thinking,
        channel_start_id=m.channel_start,
        channel_end_id=m.channel_end,
        thinking_blocked_ids=_thinking_blocked(m),
        starts_in_reasoning=starts_in_reasoning,
    )


def _answer_end_ids(compiler: GrammarCompiler) -> list[int]:
    """A structured answer ends the turn: `<turn|>` or `<eos>` (not `<|tool_response>`)."""
    return [compiler.markers.turn_end, compiler.markers.eos]


def _tool_schemas(tools: Sequence[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """(name, parameters) per tool, first declaration of a name wins."""
    out: dict[str, Any] = {}
    for tool in tools or []:
        if not isinstance(tool, Mapping):
            raise SchemaError("each tool must be an object")
        fn = tool.get("function", tool) if tool.get("type", "function") == "function" else None
        if not isinstance(fn, Mapping):
            continue  # not a function tool (e.g. a server tool): nothing the model can call here
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaError("each function tool needs a non-empty `name`")
        out.setdefault(name, fn.get("parameters"))
    if not out:
        raise SchemaError("tool_choice requires a tool call, but the request declares no function tools")
    return list(out.items())


def _strict_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    """Names of the function tools declared with `strict: true`."""
    names = set()
    for tool in tools or []:
        fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and fn.get("strict") is True and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return names


def _mode_name(mode: Mapping[str, Any]) -> str:
    fn = mode.get("function") if isinstance(mode.get("function"), Mapping) else mode
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise SchemaError("tool_choice must be 'required' or name a function")
    return name
