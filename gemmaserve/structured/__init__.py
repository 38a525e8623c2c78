"""Grammar-constrained decoding (llguidance): response_format JSON and forced Gemma 4 tool calls."""

from gemmaserve.structured.compiler import (
    ConstraintError,
    GrammarCompiler,
    MarkerIds,
    SchemaError,
    check_schema_size,
)
from gemmaserve.structured.constraint import GrammarConstraint
from gemmaserve.structured.factories import (
    grammar_constraint,
    json_object_constraint,
    json_schema_constraint,
    tool_call_constraint,
)

__all__ = [
    "ConstraintError",
    "GrammarCompiler",
    "GrammarConstraint",
    "MarkerIds",
    "SchemaError",
    "check_schema_size",
    "grammar_constraint",
    "json_object_constraint",
    "json_schema_constraint",
    "tool_call_constraint",
]
