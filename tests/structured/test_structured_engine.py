"""End to end on the tiny random-weight demo model: constrained requests through the real engine."""

import json

import pytest

from gemmaserve import LLM, SamplingParams
from gemmaserve.chat.parser import parse_output
from gemmaserve.demo import write_demo_model
from gemmaserve.structured import GrammarCompiler, json_schema_constraint, tool_call_constraint
from gemmaserve.types import FinishReason

# Short, bounded values keep the run brief: random weights close a free string or stop a digit run
# only by chance, and every token is a full model step.
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 4}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}},
    {"type": "function", "function": {"name": "stop_timer", "parameters": {
        "type": "object", "properties": {"id": {"enum": [1, 2, 3]}, "force": {"type": "boolean"}}, "required": ["id"]}}},
]
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "tag": {"enum": ["a", "b"]}},
          "required": ["ok", "tag"]}
THINKING_OFF = "<bos><|turn>user\nWhat's the weather in Paris?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = write_demo_model(tmp_path_factory.mktemp("tiny-structured"), size="tiny")
    return LLM(str(path), dtype="float32", max_model_len=512)


def test_demo_model_constrained_outputs_parse_and_validate(llm, schema_errors):
    grammar = GrammarCompiler(llm.tokenizer)
    prompt = llm.tokenizer.encode(THINKING_OFF)
    params = [
        SamplingParams(max_tokens=120, seed=0, constraints=[tool_call_constraint(grammar, TOOLS, "required", False)]),
        SamplingParams(max_tokens=120, seed=1, constraints=[
            tool_call_constraint(grammar, TOOLS, {"type": "function", "function": {"name": "stop_timer"}}, True)]),
        SamplingParams(max_tokens=120, seed=2, constraints=[json_schema_constraint(grammar, SCHEMA, strict=True)]),
    ]
    required, named, as_json = llm.generate([prompt] * 3, params)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for out in (required, named):
        # The stop token (<|tool_response>, <turn|> or <eos>) ended it; CHAT's parser, the one the
        # API uses, turns the text into calls with JSON arguments that follow the tool's schema.
        assert out.finish_reason == FinishReason.STOP, out.text
        parsed = parse_output(out.text, tools=TOOLS)
        assert parsed.tool_calls and not (parsed.content or "").strip(), out.text
        for call in parsed.tool_calls:
            assert schema_errors(json.loads(call.arguments), schemas[call.name]) == []
    assert len(parse_output(required.text, tools=TOOLS).tool_calls) == 1
    assert {c.name for c in parse_output(named.text, tools=TOOLS).tool_calls} == {"stop_timer"}
    assert as_json.finish_reason == FinishReason.STOP
    value = json.loads(as_json.text)  # the stop token is not part of the text
    assert schema_errors(value, SCHEMA) == [] and set(value) <= {"ok", "tag"}
