"""End to end on the demo tokenizer: rendered markers encode to their single control-token ids,
and generated ids decoded token by token (special tokens kept) parse into reasoning and calls."""

import json

import pytest
import torch

from gemmaserve.chat import ChatRenderer, OutputStreamParser, ThinkingBudget, collect_events, count_reasoning_tokens
from gemmaserve.demo_tokenizer import build_demo_tokenizer
from gemmaserve.tokenizer import Tokenizer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(build_demo_tokenizer(1024))


def test_rendered_prompt_encodes_markers_as_control_ids(tok):
    prompt = ChatRenderer.default().render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS, enable_thinking=True,
    )
    ids = tok.encode(prompt)
    assert ids[:2] == [2, 105]  # <bos> <|turn>, and no second BOS
    tail = tok.encode("<|turn>model\n")
    assert tail[0] == 105 and tail[-1] == 107 and ids[-len(tail):] == tail
    assert ids.count(98) == 1 and ids.count(46) == 1 and ids.count(47) == 1  # <|think|>, <|tool> <tool|>
    assert ids.count(106) == 2  # two closed turns
    assert tok.decode(ids) == prompt


def test_generated_ids_stream_through_the_parser(tok):
    generated = (
        "<|channel>thought\nThe user wants Paris.<channel|>"
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>'
    )
    ids = tok.encode(generated) + [50]  # the engine stops on <|tool_response>
    assert ids[0] == 100 and 101 in ids and ids.count(52) == 2
    parser = OutputStreamParser(TOOLS)
    events, text = [], ""
    for k in range(1, len(ids) + 1):
        full = tok.decode(ids[:k], skip_special_tokens=False)
        events += parser.feed(full[len(text):])
        text = full
    events += parser.finish()
    parsed = collect_events(events)
    assert parsed.reasoning == "The user wants Paris."
    assert parsed.content is None
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris", "days": 2})]
    # Reasoning tokens = those between <|channel> and <channel|>.
    inner = tok.encode("thought\nThe user wants Paris.")
    assert count_reasoning_tokens(ids, 100, 101) == len(inner)
    budget = ThinkingBudget(len(inner), 100, 101)
    assert budget.reasoning_tokens == 0
    row = torch.zeros(1024)
    budget.mask_logits(ids[: 1 + len(inner)], row)
    assert torch.isfinite(row).nonzero().flatten().tolist() == [101]
