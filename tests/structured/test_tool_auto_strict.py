"""tool_choice "auto" with `strict: true` tools: text or calls may come, strict arguments follow the schema."""

import pytest
import torch

from gemmaserve.chat import parse_output
from gemmaserve.structured import tool_call_constraint

from structured_support import VOCAB

D = '<|"|>'
DAYS = {"type": "object", "properties": {"days": {"type": "integer", "enum": [1, 2]}}, "required": ["days"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "plan", "strict": True, "parameters": DAYS}},
         {"type": "function", "function": {"name": "note", "parameters": DAYS}}]  # not strict


def _allowed(c, ids):
    logits = torch.zeros(VOCAB)
    c.mask_logits(ids, logits)
    return set(torch.isfinite(logits).nonzero().flatten().tolist())


@pytest.fixture
def auto(compiler):
    return lambda: tool_call_constraint(compiler, TOOLS, "auto")


def test_plain_text_answers_stay_free(auto, tokenizer, compiler):
    m = compiler.markers
    text = tokenizer.encode("Hello <b>there</b> {not a call}")
    allowed = _allowed(auto(), text)
    assert {m.turn_end, m.eos, m.tool_call_start} <= allowed and tokenizer.encode("z")[0] in allowed
    assert m.tool_response_start not in allowed  # only a call may end with <|tool_response>


def test_strict_tool_arguments_follow_the_schema(auto, tokenizer, compiler):
    m = compiler.markers
    head = tokenizer.encode("Let me plan.") + [m.tool_call_start] + tokenizer.encode("call:plan{days:")
    allowed = _allowed(auto(), head)
    assert {tokenizer.decode([i]) for i in allowed} == {"1", "2"}
    # The non-strict tool takes any Gemma object.
    loose = [m.tool_call_start] + tokenizer.encode("call:note{days:")
    assert tokenizer.encode("7")[0] in _allowed(auto(), loose)
    assert tokenizer.encode("z")[0] not in _allowed(auto(), head)


def test_random_model_gives_text_or_valid_calls(compiler, tokenizer):
    m = compiler.markers
    kinds, plans = set(), 0
    for seed in range(12):
        c = tool_call_constraint(compiler, TOOLS, "auto")
        gen = torch.Generator().manual_seed(seed)
        ids: list[int] = []
        while not ids or ids[-1] not in (m.turn_end, m.eos, m.tool_response_start):
            logits = torch.randn(VOCAB, generator=gen)
            logits[m.tool_call_start] += 4.0 if seed % 2 else -4.0  # half the runs lean to calling
            logits[[m.turn_end, m.eos]] += 3.0 if len(ids) > 8 else -3.0
            c.mask_logits(ids, logits)
            ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
            assert len(ids) < 600
        parsed = parse_output(tokenizer.decode(ids), tools=TOOLS)
        for call in parsed.tool_calls:
            if call.name == "plan":
                plans += 1
                assert call.arguments in ('{"days": 1}', '{"days": 2}')
        kinds.add("call" if parsed.tool_calls else "text")
    assert kinds == {"call", "text"} and plans > 0


def test_text_cannot_spell_the_call_opener(auto, tokenizer, compiler):
    # "<|tool_call>" typed with ordinary tokens would be parsed as a call the grammar never checked.
    spelled = tokenizer.encode("Hi <|tool_call")
    assert compiler.markers.tool_call_start not in spelled  # ordinary tokens only
    allowed = _allowed(auto(), spelled)
    (gt,) = tokenizer.encode(">")
    assert gt not in allowed and tokenizer.encode("x")[0] in allowed
    assert gt in _allowed(auto(), tokenizer.encode("Hi <|tool_cal"))  # "...cal>" is harmless text
