"""GrammarConstraint mechanics: thinking phase, wide logits, re-entry, errors, compile cache."""

import json

import pytest
import torch

from gemmaserve.structured import (
    ConstraintError,
    GrammarCompiler,
    GrammarConstraint,
    json_object_constraint,
    json_schema_constraint,
    tool_call_constraint,
)
from gemmaserve.types import TokenConstraint

from structured_support import VOCAB

NEG = float("-inf")
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def _allowed(constraint, ids, width=VOCAB) -> list[int]:
    logits = torch.zeros(width)
    constraint.mask_logits(list(ids), logits)
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_is_a_token_constraint(compiler):
    assert isinstance(json_object_constraint(compiler), TokenConstraint)


def test_logits_wider_than_the_vocab_mask_the_extra_ids(compiler, tokenizer, generate):
    width = VOCAB + 77  # the model's logit width may exceed the tokenizer's vocab
    constraint = json_schema_constraint(compiler, SCHEMA, strict=True)
    logits = torch.zeros(width)
    logits[VOCAB:] = 100.0  # padding ids a model might favour
    constraint.mask_logits([], logits)
    assert torch.all(logits[VOCAB:] == NEG)
    ids = generate(json_schema_constraint(compiler, SCHEMA, strict=True), 5, width=width)
    assert all(i < VOCAB for i in ids)
    assert json.loads(tokenizer.decode(ids[:-1])) in ({"ok": True}, {"ok": False})


def test_logits_narrower_than_the_vocab_are_masked_over_their_width(compiler, tokenizer):
    m = compiler.markers
    constraint = json_schema_constraint(compiler, SCHEMA, strict=True)
    done = tokenizer.encode('{"ok":true}')
    logits = torch.zeros(200)  # ids >= 200 do not exist for this "model"
    constraint.mask_logits(done, logits)
    assert torch.isfinite(logits).nonzero().flatten().tolist() == sorted([m.eos, m.turn_end])


def test_2d_logits_row_is_edited_in_place(compiler):
    logits = torch.zeros(1, VOCAB)
    json_object_constraint(compiler).mask_logits([], logits)
    assert torch.isfinite(logits[0]).sum() >= 1 and torch.isinf(logits[0]).sum() > VOCAB // 2


def test_thinking_may_open_then_runs_free_then_applies(compiler, tokenizer, generate):
    m = compiler.markers
    constraint = json_schema_constraint(compiler, SCHEMA, strict=True, start_after_thinking=True)
    first = _allowed(constraint, [])
    assert m.channel_start in first and all(i == m.channel_start or tokenizer.decode([i]).startswith("{") for i in first)
    thought = [m.channel_start] + tokenizer.encode("thought\nLet me think: {not json} <yes>")
    inside = _allowed(constraint, thought)
    blocked = {m.eos, m.turn_end, m.tool_response_start, m.tool_call_start, m.tool_call_end}
    # Free text inside the thought: everything except ending the turn or opening a tool call.
    assert set(range(VOCAB)) - set(inside) == blocked
    after = _allowed(constraint, thought + [m.channel_end])
    assert after == _allowed(json_schema_constraint(compiler, SCHEMA, strict=True), [])
    answer = tokenizer.encode('{"ok":true}')
    assert _allowed(constraint, thought + [m.channel_end] + answer) == sorted([m.turn_end, m.eos])


def test_thinking_then_random_answer_still_validates(compiler, tokenizer, generate):
    m = compiler.markers
    thought = [m.channel_start] + tokenizer.encode("thought\nhmm") + [m.channel_end]
    for seed in range(6):
        c = json_schema_constraint(compiler, SCHEMA, strict=True, start_after_thinking=True)
        for i in range(len(thought)):  # the model "chose" the thought tokens
            logits = torch.zeros(VOCAB)
            c.mask_logits(thought[:i], logits)
            assert torch.isfinite(logits[thought[i]])
        ids = list(thought)
        gen = torch.Generator().manual_seed(seed)
        while not ids or ids[-1] not in (m.turn_end, m.eos):
            logits = torch.randn(VOCAB, generator=gen)
            c.mask_logits(ids, logits)
            ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
        assert json.loads(tokenizer.decode(ids[len(thought):-1]))["ok"] in (True, False)


@pytest.mark.parametrize("thinking", [True, False])
def test_prompt_opened_channel_starts_inside_the_thought(compiler, tokenizer, thinking):
    # An assistant prefill "<|channel>thought\n": output token 0 is already thinking, and the
    # grammar applies after the first <channel|> (with or without the template's thinking switch).
    m = compiler.markers
    blocked = {m.eos, m.turn_end, m.tool_response_start, m.tool_call_start, m.tool_call_end}
    makers = [lambda **kw: json_schema_constraint(compiler, SCHEMA, strict=True, **kw),
              lambda **kw: json_object_constraint(compiler, **kw),
              lambda **kw: tool_call_constraint(compiler, [{"name": "f"}], "required", **kw)]
    for make in makers:
        c = make(start_after_thinking=thinking, starts_in_reasoning=True)
        thought = tokenizer.encode("{not json yet")
        assert set(range(VOCAB)) - set(_allowed(c, [])) == blocked
        assert set(range(VOCAB)) - set(_allowed(c, thought)) == blocked
        closed = thought + [m.channel_end]
        assert _allowed(c, closed) == _allowed(make(), [])
        assert _allowed(c, closed[:2]) == _allowed(make(starts_in_reasoning=True), closed[:2])  # replay
    c = json_schema_constraint(compiler, SCHEMA, strict=True, starts_in_reasoning=True)
    done = tokenizer.encode("hm") + [m.channel_end] + tokenizer.encode('{"ok":true}')
    assert _allowed(c, done) == sorted([m.turn_end, m.eos])
    with pytest.raises(ValueError, match="channel"):
        GrammarConstraint(compiler.matcher("start: \"a\"\n"), VOCAB, end_ids=[1], starts_in_reasoning=True)


def test_without_thinking_channel_is_not_allowed_first(compiler):
    m = compiler.markers
    assert m.channel_start not in _allowed(json_object_constraint(compiler, start_after_thinking=False), [])
    assert _allowed(tool_call_constraint(compiler, [{"name": "f"}], "required", start_after_thinking=True), []) == sorted(
        [m.tool_call_start, m.channel_start])


def test_same_ids_twice_gives_the_same_mask_and_shorter_list_replays(compiler, tokenizer):
    constraint = json_schema_constraint(compiler, SCHEMA, strict=True)
    prefix = tokenizer.encode('{"ok":')
    a = _allowed(constraint, prefix)
    assert _allowed(constraint, prefix) == a  # preemption: called again with the same list
    b = _allowed(constraint, prefix[:1])  # a shorter list: state rebuilt from scratch
    fresh = json_schema_constraint(compiler, SCHEMA, strict=True)
    assert b == _allowed(fresh, prefix[:1])
    assert _allowed(constraint, prefix) == a


def test_token_outside_the_grammar_raises(compiler, tokenizer):
    constraint = json_object_constraint(compiler)
    bad = tokenizer.encode("hello")
    with pytest.raises(ConstraintError, match="violates the grammar"):
        constraint.mask_logits(bad, torch.zeros(VOCAB))


def test_after_completion_only_end_tokens_remain(compiler, tokenizer):
    m = compiler.markers
    constraint = json_schema_constraint(compiler, SCHEMA, strict=True)
    done = tokenizer.encode('{"ok":false}') + [m.turn_end]
    assert _allowed(constraint, done) == sorted([m.turn_end, m.eos])
    assert constraint.is_finished
    # ignore_eos keeps generating: end tokens are still the only choice, and are accepted.
    assert _allowed(constraint, done + [m.eos]) == sorted([m.turn_end, m.eos])
    with pytest.raises(ConstraintError, match="after the grammar was complete"):
        constraint.mask_logits(done + [m.eos] + tokenizer.encode("x"), torch.zeros(VOCAB))


def test_compiled_grammars_are_cached_per_compiler(tokenizer):
    compiler = GrammarCompiler(tokenizer, cache_size=2)
    json_object_constraint(compiler)
    json_object_constraint(compiler)
    assert compiler.cache_len() == 1
    json_schema_constraint(compiler, SCHEMA, strict=True)
    json_schema_constraint(compiler, {"type": "array"}, strict=True)
    assert compiler.cache_len() == 2  # least recently used entry dropped
    # Two constraints from one cached grammar keep separate state.
    a, b = json_object_constraint(compiler), json_object_constraint(compiler)
    a.mask_logits(tokenizer.encode('{"x":'), torch.zeros(VOCAB))
    assert _allowed(b, []) == _allowed(json_object_constraint(compiler), [])


def test_plain_tokenizers_are_accepted(tokenizer, generate):
    # The factories also take the gemmaserve Tokenizer or the raw tokenizers.Tokenizer.
    for tok in (tokenizer, tokenizer.hf):
        ids = generate(json_object_constraint(tok), 1)
        assert isinstance(json.loads(tokenizer.decode(ids[:-1])), dict)


def test_grammar_constraint_needs_channel_ids_for_thinking(compiler):
    with pytest.raises(ValueError, match="channel"):
        GrammarConstraint(compiler.matcher("start: \"a\"\n"), VOCAB, end_ids=[1], thinking=True)
