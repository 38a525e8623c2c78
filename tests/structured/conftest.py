"""Fixtures for structured-output tests: a demo-like tokenizer, a compiler, a random "model"."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from structured_support import STOP_IDS, VOCAB, validate

from gemmaserve.demo_tokenizer import build_demo_tokenizer
from gemmaserve.structured import GrammarCompiler
from gemmaserve.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer(build_demo_tokenizer(VOCAB))


@pytest.fixture(scope="session")
def compiler(tokenizer: Tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer)


@pytest.fixture(scope="session")
def closing_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids that close a string or a container. A uniformly random model almost never picks one
    inside a string (1 in ~500), so the test model favours them to finish in a few hundred steps."""
    ids = [tokenizer.string_delim]
    for i in range(tokenizer.vocab_size):
        if i in tokenizer.special_ids:
            continue
        text = tokenizer.decode([i])
        if any(c in text for c in '"}]'):
            ids.append(i)
    return ids


@pytest.fixture(scope="session")
def generate(closing_ids: list[int]) -> Callable[..., list[int]]:
    """generate(constraint, seed, width=VOCAB, max_tokens=2000, bias=4.0) -> ids: a random model
    (fresh normal logits each step) sampling from the constrained logits until a stop id."""

    def run(constraint, seed: int, width: int = VOCAB, max_tokens: int = 2000, bias: float = 4.0) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        ids: list[int] = []
        while len(ids) < max_tokens:
            logits = torch.randn(width, generator=gen) * 2.0  # [width]
            logits[closing_ids] += bias
            constraint.mask_logits(ids, logits)
            assert torch.isfinite(logits).any()
            probs = torch.softmax(logits, dim=-1)
            ids.append(int(torch.multinomial(probs, 1, generator=gen)))
            if ids[-1] in STOP_IDS:
                return ids
        raise AssertionError(f"no stop token within {max_tokens} tokens")

    return run


@pytest.fixture(scope="session")
def schema_errors() -> Callable[..., list[str]]:
    return validate
