"""top_a (honoured as a logits cut after the other constraints) and legacy completions' response_format."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from gemmaserve.chat.constraints import ThinkingBudget
from gemmaserve.engine.sampler import Sampler, SamplingState, top_a_cut
from gemmaserve.structured import GrammarConstraint
from gemmaserve.types import SamplingParams

MODEL = "google/gemma-4-26b-a4b-it"
MSGS = [{"role": "user", "content": "Hi"}]


def test_top_a_keeps_ids_at_or_above_a_times_pmax_squared():
    probs = torch.tensor([0.5, 0.3, 0.125, 0.075])
    logits = probs.log()
    top_a_cut(logits, 0.5)  # cut = 0.5 * 0.25 = 0.125: ids 0, 1, 2 stay
    assert torch.isfinite(logits).tolist() == [True, True, True, False]
    assert torch.allclose(logits[:3], probs[:3].log())  # survivors unchanged (renormalised later)
    sure = torch.tensor([0.9, 0.05, 0.05]).log()
    top_a_cut(sure, 0.1)  # cut = 0.081
    assert torch.isfinite(sure).tolist() == [True, False, False]


def test_top_a_sees_only_what_earlier_constraints_allowed():
    # ids 0 and 1 masked by a grammar: the cut is relative to the best *allowed* id, which survives.
    class FirstTwoBanned:
        def mask_logits(self, output_token_ids, row):
            row[:2] = float("-inf")

    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0, -5.0]])  # allowed probs ~ [.727, .268, .005]: cut .529
    state = SamplingState(SamplingParams(top_a=1.0, constraints=[FirstTwoBanned()]), [], 5, [])
    out = Sampler(5).process(logits, [state], [[]])
    assert torch.isfinite(out[0]).tolist() == [False, False, True, False, False]


def test_top_a_reaches_the_engine(fake, demo_tokenizer):
    client = openai.OpenAI(base_url=fake.url, api_key="unused", max_retries=0)
    client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=8, response_format={"type": "json_object"},
                                   extra_body={"top_a": 0.2, "reasoning": {"max_tokens": 3}})
    params = fake.engine.calls[-1].params
    # The sampler applies top_a after every constraint (test above).
    assert [type(c) for c in params.constraints] == [ThinkingBudget, GrammarConstraint] and params.top_a == 0.2
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"top_a": 0.7})
    assert fake.engine.calls[-1].params.top_a == 0.7 and fake.engine.calls[-1].params.constraints == []
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"top_a": 0})
    assert fake.engine.calls[-1].params.top_a == 0.0


@pytest.mark.parametrize("fmt", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "r", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}}},
])
def test_legacy_completion_honours_response_format(fake, demo_tokenizer, fmt):
    fake.engine.script = ['{"a": 1}']
    r = httpx.post(fake.url + "/completions", json={"model": MODEL, "prompt": "JSON:", "response_format": fmt})
    assert r.status_code == 200 and json.loads(r.json()["choices"][0]["text"]) == {"a": 1}
    (grammar,) = fake.engine.calls[-1].params.constraints
    assert isinstance(grammar, GrammarConstraint)
    # The grammar applies from the first token (a raw prompt has no thought channel): it
    # accepts the scripted answer, and refuses a token that cannot start JSON.
    ids = demo_tokenizer.encode('{"a": 1}')
    row = torch.zeros(demo_tokenizer.vocab_size)
    grammar.mask_logits(ids, row)
    assert torch.isfinite(row[demo_tokenizer.token_to_id("<turn|>")])
    first = torch.zeros(demo_tokenizer.vocab_size)
    grammar.mask_logits([], first)
    assert not torch.isfinite(first[demo_tokenizer.encode("x")[0]]) and torch.isfinite(first[ids[0]])


def test_strict_tools_in_auto_mode_get_a_grammar(fake):
    client = openai.OpenAI(base_url=fake.url, api_key="unused", max_retries=0)
    params = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    strict = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": params}}]
    loose = [{"type": "function", "function": {"name": "f", "parameters": params}}]
    client.chat.completions.create(model=MODEL, messages=MSGS, tools=strict)
    assert [type(c) for c in fake.engine.calls[-1].params.constraints] == [GrammarConstraint]
    client.chat.completions.create(model=MODEL, messages=MSGS, tools=strict, tool_choice="auto")
    assert [type(c) for c in fake.engine.calls[-1].params.constraints] == [GrammarConstraint]
    # Not strict, tool_choice none, or a JSON answer asked for: no tool grammar.
    for kw in (dict(tools=loose), dict(tools=strict, tool_choice="none"),
               dict(tools=strict, response_format={"type": "json_object"})):
        fake.engine.script = ['{"a": 1}']
        client.chat.completions.create(model=MODEL, messages=MSGS, **kw)
        kinds = [type(c) for c in fake.engine.calls[-1].params.constraints]
        assert kinds == ([GrammarConstraint] if "response_format" in kw else []), kw
