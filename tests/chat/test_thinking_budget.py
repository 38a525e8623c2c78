"""ThinkingBudget forces <channel|> once the reasoning budget is spent; count_reasoning_tokens."""

import math

import pytest
import torch

from gemmaserve.chat.constraints import ThinkingBudget, count_reasoning_tokens
from gemmaserve.types import TokenConstraint

OPEN, CLOSE, TURN_END = 100, 101, 106
VOCAB = 128


def logits():
    return torch.arange(VOCAB, dtype=torch.float32) / 10  # [vocab], distinct finite values


def is_forced(row):
    finite = torch.isfinite(row).nonzero().flatten().tolist()
    return finite == [CLOSE] and row[CLOSE].item() == 0.0


def test_is_a_token_constraint():
    assert isinstance(ThinkingBudget(4, OPEN, CLOSE), TokenConstraint)


@pytest.mark.parametrize("ids, expected", [
    ([], 0),
    ([5, 6, 7], 0),
    ([OPEN, 45, 7, 8, CLOSE, 9, 10], 3),
    ([OPEN, 1, CLOSE, 2, OPEN, 3, 4, CLOSE], 3),
    ([OPEN, 1, 2, 3], 3),  # still open (truncated)
    ([CLOSE, 1], 0),
])
def test_count_reasoning_tokens(ids, expected):
    assert count_reasoning_tokens(ids, OPEN, CLOSE) == expected


def test_count_reasoning_tokens_prompt_left_channel_open():
    assert count_reasoning_tokens([1, 2, CLOSE, 3], OPEN, CLOSE, starts_in_reasoning=True) == 2


def test_budget_forces_close_exactly_at_the_budget():
    budget = ThinkingBudget(3, OPEN, CLOSE)
    seq = [OPEN, 45, 7]  # <|channel> thought \n  -> 2 reasoning tokens so far
    for n in range(len(seq) + 1):
        row = logits()
        budget.mask_logits(seq[:n], row)
        expected = logits()
        if n > 0:  # inside the channel: only a nested <|channel> is masked while under budget
            expected[OPEN] = -math.inf
        assert torch.equal(row, expected)
    seq.append(9)  # third reasoning token: budget spent
    row = logits()
    budget.mask_logits(seq, row)
    assert is_forced(row)
    assert budget.reasoning_tokens == 3
    # After the model closes the channel the answer is free again.
    seq.append(CLOSE)
    row = logits()
    budget.mask_logits(seq, row)
    assert torch.equal(row, logits())
    # A second channel cannot reset the budget: it is closed right away.
    seq += [5, OPEN]
    row = logits()
    budget.mask_logits(seq, row)
    assert is_forced(row)


def test_budget_zero_closes_immediately_and_overrides_other_masks():
    budget = ThinkingBudget(0, OPEN, CLOSE)
    row = torch.full((VOCAB,), -math.inf)  # e.g. a grammar had masked everything
    budget.mask_logits([OPEN], row)
    assert is_forced(row)


def test_budget_is_idempotent_and_survives_preemption():
    budget = ThinkingBudget(2, OPEN, CLOSE)
    ids = [OPEN, 1, 2]
    for _ in range(3):  # same ids again (preempted and recomputed): same decision, no double count
        row = logits()
        budget.mask_logits(ids, row)
        assert is_forced(row)
        assert budget.reasoning_tokens == 2
    row = logits()
    budget.mask_logits([OPEN], row)  # a shorter list: state rebuilt from scratch
    assert torch.isfinite(row).sum() == VOCAB - 1 and row[OPEN].item() == -math.inf
    assert budget.reasoning_tokens == 0


def test_budget_when_prompt_opened_the_channel():
    budget = ThinkingBudget(1, OPEN, CLOSE, starts_in_reasoning=True)
    row = logits()
    budget.mask_logits([], row)
    expected = logits()
    expected[OPEN] = -math.inf  # already inside: no nested opener
    assert torch.equal(row, expected)
    row = logits()
    budget.mask_logits([7], row)
    assert is_forced(row)


def test_negative_budget_rejected():
    with pytest.raises(ValueError):
        ThinkingBudget(-1, OPEN, CLOSE)


def test_nested_channel_opener_cannot_outrun_the_budget():
    """A logit_bias on <|channel> made a random model repeat it inside the thought channel:
    uncounted, so the budget never closed the channel and the request thought to max_tokens."""
    budget = ThinkingBudget(2, OPEN, CLOSE)
    row = logits()
    row[OPEN] = 1e4  # the bias
    budget.mask_logits([OPEN], row)
    assert row[OPEN].item() == -math.inf and torch.isfinite(row[:OPEN]).all()
    assert int(row.argmax()) != OPEN
    row = logits()
    ThinkingBudget(2, OPEN, CLOSE).mask_logits([5], row)  # outside a channel opening one stays allowed
    assert torch.equal(row, logits())
