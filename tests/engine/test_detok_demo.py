"""IncrementalDetokenizer on the demo tokenizer (Gemma-style BPE with byte fallback): streamed text equals a full decode."""

import random

import pytest

from gemmaserve.demo_tokenizer import build_demo_tokenizer
from gemmaserve.engine.detokenizer import IncrementalDetokenizer, is_token_local
from gemmaserve.tokenizer import Tokenizer
from gemmaserve.types import SamplingParams

TEXTS = [
    "Hello there, how are you today?",
    "naïve café — 東京タワー 😀👍🏽 and 中文 text",
    "tabs\tand\nnewlines\n\n  spaces  ",
    "emoji soup 🧑‍🚀🏳️‍🌈 ∑∫√ ẞ",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(build_demo_tokenizer(4096))


def random_ids(tok: Tokenizer, rng: random.Random) -> list[int]:
    """Encoded multilingual text (byte-fallback runs for CJK/emoji) spliced with random ids,
    control tokens and stray bytes: the kind of stream a random-weight model produces."""
    ids = tok.encode(rng.choice(TEXTS))
    for _ in range(rng.randint(0, 6)):
        ids.insert(rng.randrange(len(ids) + 1), rng.choice([rng.randrange(tok.vocab_size), 100, 101, 48, 5 + 0xE2, 5 + 0x80]))
    return ids


def feed(detok: IncrementalDetokenizer, ids: list[int], rng: random.Random) -> tuple[list[str], str | None]:
    deltas, stop, i = [], None, 0
    while i < len(ids):
        n = rng.randint(1, 3)
        d = detok.add(ids[i : i + n])
        deltas.append(d.new_text)
        i += n
        if d.stop_string is not None:
            return deltas, d.stop_string
    deltas.append(detok.flush())
    return deltas, stop


def reference(tok: Tokenizer, ids: list[int], skip: bool = False) -> str:
    """What the stream must equal: the token bytes decoded as UTF-8 with replacement."""
    d = IncrementalDetokenizer(tok, SamplingParams())
    specials = tok.special_ids if skip else set()
    return b"".join(d.token_bytes(t) for t in ids if t not in specials).decode("utf-8", "replace")


def test_demo_tokenizer_uses_byte_mode(tok):
    assert is_token_local(tok)


@pytest.mark.parametrize("skip", [False, True])
def test_valid_text_streams_exactly_as_the_full_decode(tok, skip):
    rng = random.Random(2)
    for text in TEXTS * 5:
        ids = tok.encode(text) + [100] + tok.encode(text[::-1]) + [101]
        d = IncrementalDetokenizer(tok, SamplingParams(skip_special_tokens=skip))
        deltas, stop = feed(d, ids, rng)
        assert stop is None
        assert "".join(deltas) == d.text == tok.decode(ids, skip_special_tokens=skip)
        assert all("\ufffd" not in x for x in deltas)


@pytest.mark.parametrize("skip", [False, True])
def test_garbage_streams_as_utf8_with_replacement_whatever_the_chunking(tok, skip):
    rng = random.Random(0)
    for _ in range(150):
        ids = random_ids(tok, rng)
        d = IncrementalDetokenizer(tok, SamplingParams(skip_special_tokens=skip))
        deltas, stop = feed(d, ids, rng)
        assert stop is None
        assert "".join(deltas) == d.text == reference(tok, ids, skip)


def test_stream_with_stop_strings_matches_a_cut_of_the_full_text(tok):
    rng = random.Random(1)
    for _ in range(150):
        ids = random_ids(tok, rng)
        full = reference(tok, ids)
        # Stop strings drawn from the text itself (so they do match), plus one that never does.
        stops = ["@@never@@"]
        for _ in range(2):
            a = rng.randrange(len(full))
            stops.append(full[a : a + rng.randint(1, 4)])
        stops = [s for s in stops if s and "\ufffd" not in s]
        include = rng.random() < 0.5
        d = IncrementalDetokenizer(tok, SamplingParams(stop=stops, include_stop_str_in_output=include))
        deltas, stop = feed(d, ids, rng)
        hits = [(full.find(s) + len(s), full.find(s), s) for s in stops if full.find(s) >= 0]
        if not hits:
            assert stop is None and "".join(deltas) == full
            continue
        _, start, s = min(hits, key=lambda h: (h[0], h[1]))
        assert stop == s
        assert "".join(deltas) == full[:start] + (s if include else "") == d.text
