"""GrammarConstraint: a per-request TokenConstraint that masks logits to an llguidance grammar."""

from __future__ import annotations

from typing import Sequence

import llguidance as llg
import numpy as np
import torch

from gemmaserve.structured.compiler import ConstraintError

# Where the request is relative to an optional leading thought channel.
_START = 0  # nothing generated yet: the model may open <|channel> or start the answer
_THINKING = 1  # inside <|channel>...<channel|>: tokens run free
_CONSTRAINED = 2  # every further token goes through the grammar


class GrammarConstraint:
    """Masks each step's logits so the output follows a compiled grammar.

    The matcher advances over output ids it has not seen yet; called again with a list it already
    consumed (preemption) it recomputes the same mask, and a shorter list replays it from the start.
    With `thinking=True` the grammar starts after a leading `<|channel>...<channel|>` block: the
    first token may also be `<|channel>`; inside the channel everything but `thinking_blocked_ids`
    runs free (ending the turn, or opening a tool call, inside the thought would skip the
    structured answer); the grammar applies from the token after `<channel|>`. If the first token is not `<|channel>` the grammar applies at once.
    With `starts_in_reasoning=True` the prompt itself left the channel open (an assistant prefill
    "<|channel>thought\n"): the request starts inside the thought, and the grammar applies after
    the first `<channel|>`.

    Grammars built by this package end with explicit end tokens (`end_ids`), so once the grammar is
    complete the matcher only allows those; if generation continues anyway (ignore_eos) the end
    tokens stay the only legal ids.
    """

    def __init__(
        self,
        matcher: llg.LLMatcher,
        vocab_size: int,
        *,
        end_ids: Sequence[int],
        thinking: bool = False,
        channel_start_id: int | None = None,
        channel_end_id: int | None = None,
        thinking_blocked_ids: Sequence[int] | None = None,
        starts_in_reasoning: bool = False,
    ) -> None:
        if (thinking or starts_in_reasoning) and (channel_start_id is None or channel_end_id is None):
            raise ValueError("thinking=True or starts_in_reasoning=True needs channel_start_id and channel_end_id")
        if matcher.is_error():
            raise ConstraintError(f"grammar matcher failed to start: {matcher.get_error()}")
        self._matcher = matcher
        self._vocab_size = vocab_size  # the tokenizer's; the logits may be wider
        self._end_ids = list(end_ids)
        self._thinking = thinking
        self._channel_start = channel_start_id
        self._channel_end = channel_end_id
        # Ids masked inside the thought channel (default: the end ids).
        self._blocked = list(self._end_ids if thinking_blocked_ids is None else thinking_blocked_ids)
        self._initial = _THINKING if starts_in_reasoning else _START if thinking else _CONSTRAINED
        self._phase = self._initial
        self._seen = 0  # output ids consumed so far (the thinking part included)
        self._n_words = (vocab_size + 31) // 32
        self._bitmask = torch.zeros(self._n_words, dtype=torch.int32)  # [ceil(V/32)] llguidance bits

    # -- state -------------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        """True once the grammar (end token included) has been fully generated."""
        return self._phase == _CONSTRAINED and self._matcher.is_stopped() and not self._matcher.is_error()

    def _advance(self, output_token_ids: Sequence[int]) -> None:
        n = len(output_token_ids)
        if n < self._seen:
            # The caller's list got shorter (never in normal decoding): replay from the start.
            self._matcher.reset()
            self._phase = self._initial
            self._seen = 0
        for i in range(self._seen, n):
            self._step(i, int(output_token_ids[i]))
        self._seen = n

    def _step(self, index: int, token_id: int) -> None:
        if self._phase == _START:
            if token_id == self._channel_start:
                self._phase = _THINKING
                return
            self._phase = _CONSTRAINED
        elif self._phase == _THINKING:
            if token_id == self._channel_end:
                self._phase = _CONSTRAINED
            return
        if self._matcher.is_stopped():
            if token_id in self._end_ids:
                return  # extra end tokens after completion (ignore_eos): nothing to consume
            raise ConstraintError(
                f"token {token_id} generated after the grammar was complete (only end tokens are allowed)"
            )
        if not self._matcher.consume_token(token_id):
            raise ConstraintError(
                f"token {token_id} at output position {index} violates the grammar: {self._matcher.get_error()}"
            )

    def can_start_without(self, excluded: Sequence[int]) -> bool:
        """Whether the grammar's first token can be something other than `excluded` (the ids the
        sampler never draws): False means the request could only fail, which is the client's
        error, to be refused before it runs. Leaves the matcher where it was."""
        if self._initial != _CONSTRAINED:
            return True  # the thought channel may open first
        allowed = self._grammar_allowed()
        allowed[[i for i in excluded if 0 <= i < self._vocab_size]] = False
        return bool(allowed.any())

    # -- TokenConstraint ---------------------------------------------------------------------
    def mask_logits(self, output_token_ids: Sequence[int], logits: torch.Tensor) -> None:
        """Set the logits of ids the grammar forbids to -inf, in place. logits: [vocab] or [1, vocab]."""
        self._advance(output_token_ids)
        row = logits.view(-1)  # [W], W >= or <= the tokenizer's vocab size
        if self._phase == _THINKING:
            blocked = [i for i in self._blocked if i < row.shape[0]]
            if blocked:
                row[blocked] = float("-inf")
            return
        width = row.shape[0]
        if self._matcher.is_stopped() and not self._matcher.is_error():
            allowed = np.zeros(self._vocab_size, dtype=np.bool_)  # [V] grammar done: end ids only
            allowed[self._end_ids] = True
        else:
            allowed = self._grammar_allowed()
            if self._phase == _START:
                allowed[self._channel_start] = True  # the thought channel may open first
        n = min(width, self._vocab_size)
        if not allowed[:n].any():
            raise ConstraintError(f"grammar allows no token here: {self._matcher.get_error() or 'dead end'}")
        forbidden = torch.from_numpy(~allowed[:n])  # [n]
        row[:n].masked_fill_(forbidden.to(row.device, non_blocking=True), float("-inf"))
        row[n:] = float("-inf")  # ids past the tokenizer's vocab (padding rows of the embedding)

    def _grammar_allowed(self) -> np.ndarray:
        """[V] bool (a fresh, writable array): the ids the grammar allows next."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._n_words * 4)
        if self._matcher.is_error():
            raise ConstraintError(f"grammar matcher failed: {self._matcher.get_error()}")
        # Bit j of word w is token 32*w + j (little-endian bytes, least significant bit first).
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")  # [32*n_words] uint8 0/1
        return bits[: self._vocab_size].view(np.bool_)
