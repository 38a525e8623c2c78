"""Random-token prompts drawn from a tokenizer's ordinary vocabulary, identical for every engine."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence


class PromptVocab:
    """Token ids random prompts draw from: the tokenizer's ordinary tokens (no control or added
    tokens, no byte-fallback pieces), so a prompt means the same on every server."""

    def __init__(self, ids: Sequence[int], bos_id: int, tokenizer: Any = None):
        if not ids:
            raise ValueError("empty prompt vocabulary")
        self.ids = list(ids)
        self.bos_id = bos_id
        self.tokenizer = tokenizer

    @classmethod
    def from_tokenizer(cls, path: str | Path, bos_id: int) -> "PromptVocab":
        from tokenizers import Tokenizer

        p = Path(path)
        tok = Tokenizer.from_file(str(p / "tokenizer.json" if p.is_dir() else p))
        added = set(tok.get_added_tokens_decoder())
        vocab = tok.get_vocab(with_added_tokens=False)
        ids = sorted(i for t, i in vocab.items() if i not in added and not t.startswith("<0x"))
        return cls(ids, bos_id, tok)

    @classmethod
    def from_range(cls, text: str, bos_id: int) -> "PromptVocab":
        lo, hi = (int(x) for x in text.split(":"))
        return cls(range(lo, hi), bos_id)

    def prompts(self, n: int, length: int, seed: int) -> list[list[int]]:
        rng = random.Random(seed)
        return [[self.bos_id] + rng.choices(self.ids, k=length - 1) for _ in range(n)]

    def as_text(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            raise ValueError("--prompt-type text needs --tokenizer")
        return self.tokenizer.decode(ids[1:], skip_special_tokens=True)
