"""Thinking budget: force the thought channel closed after N reasoning tokens; count reasoning tokens."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["ThinkingBudget", "count_reasoning_tokens"]


def count_reasoning_tokens(
    token_ids: Sequence[int], channel_start_id: int, channel_end_id: int, starts_in_reasoning: bool = False
) -> int:
    """Tokens generated inside thought channels, the `<|channel>`/`<channel|>` markers excluded
    (usage.completion_tokens_details.reasoning_tokens)."""
    inside = starts_in_reasoning
    count = 0
    for tid in token_ids:
        if tid == channel_start_id:
            inside = True
        elif tid == channel_end_id:
            inside = False
        elif inside:
            count += 1
    return count


class ThinkingBudget:
    """A TokenConstraint: once `budget_tokens` tokens were generated inside thought channels (all
    channels of the request together, so reopening one does not reset the budget), every token but
    `<channel|>` is masked while a channel is open, so the model closes it and answers. Inside a
    channel `<|channel>` is always masked (it would be uncounted thinking)."""

    def __init__(
        self, budget_tokens: int, channel_start_id: int, channel_end_id: int, starts_in_reasoning: bool = False
    ) -> None:
        if budget_tokens < 0:
            raise ValueError("budget_tokens must be >= 0")
        self.budget_tokens = budget_tokens
        self.channel_start_id = channel_start_id
        self.channel_end_id = channel_end_id
        self._starts_in_reasoning = starts_in_reasoning
        self._reset()

    def _reset(self) -> None:
        self._seen = 0  # how many of the output ids were folded into the state below
        self._inside = self._starts_in_reasoning
        self._count = 0

    def _advance(self, output_token_ids: Sequence[int]) -> None:
        # Called again with the same ids after preemption; a shorter list means a fresh start.
        if len(output_token_ids) < self._seen:
            self._reset()
        for tid in output_token_ids[self._seen :]:
            if tid == self.channel_start_id:
                self._inside = True
            elif tid == self.channel_end_id:
                self._inside = False
            elif self._inside:
                self._count += 1
        self._seen = len(output_token_ids)

    @property
    def reasoning_tokens(self) -> int:
        return self._count

    def mask_logits(self, output_token_ids: Sequence[int], logits: torch.Tensor) -> None:
        self._advance(output_token_ids)
        if self._inside:
            # A nested <|channel> is never valid Gemma output, and is not a reasoning token: a
            # model (or a logit_bias) that repeats it would otherwise think past any budget.
            logits[..., self.channel_start_id] = float("-inf")
        if self._inside and self._count >= self.budget_tokens:
            # logits: [vocab] float32. Only <channel|> stays sampleable (0.0 even if an earlier
            # constraint had masked it, so the row never becomes all -inf).
            logits.fill_(float("-inf"))
            logits[..., self.channel_end_id] = 0.0
