"""IncrementalDetokenizer and StopStringMatcher against a small byte-fallback BPE tokenizer."""

import pytest
from tokenizers import AddedToken, decoders, models, normalizers
from tokenizers import Tokenizer as HFTokenizer

from gemmaserve.engine.detokenizer import DetokDelta, IncrementalDetokenizer, is_token_local
from gemmaserve.engine.stop import StopStringMatcher
from gemmaserve.tokenizer import Tokenizer
from gemmaserve.types import SamplingParams

WORDS = ["▁", "中", "文", "▁hello", "▁world", "he", "ll", "hell", "hello", "ab", "▁wor", "ld", "END", "STOP"]
SPECIALS = ["<|turn>", "<turn|>", "<|channel>", "<channel|>"]


def build_hf(extra_decoders=()) -> HFTokenizer:
    vocab: dict[str, int] = {}
    for t in ["<pad>", "<eos>", "<bos>", "<unk>"]:
        vocab[t] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?") + WORDS:
        vocab[t] = len(vocab)
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("a", "b"), ("▁", "hello")]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    hf.normalizer = normalizers.Replace(" ", "▁")
    hf.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *extra_decoders]
    )
    hf.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    return hf


@pytest.fixture(scope="module", params=["bytes", "window"])
def tok(request) -> Tokenizer:
    """Gemma-like: SentencePiece '▁' spaces, <0xNN> byte fallback, control tokens. The "window"
    variant adds a no-op Strip step, which is not token-local: same text, window-mode decoding."""
    extra = [decoders.Strip(content=" ", left=0, right=0)] if request.param == "window" else []
    t = Tokenizer(build_hf(extra), eos_token_ids=[1])
    assert is_token_local(t) == (request.param == "bytes")
    return t


def ids(tok: Tokenizer, *pieces: str) -> list[int]:
    out = []
    for p in pieces:
        i = tok.token_to_id(p)
        assert i is not None, p
        out.append(i)
    return out


def byte_ids(tok: Tokenizer, text: str) -> list[int]:
    return ids(tok, *[f"<0x{b:02X}>" for b in text.encode("utf-8")])


def stream(detok: IncrementalDetokenizer, token_ids: list[int]) -> list[DetokDelta]:
    """Feed one id at a time until a stop string ends the stream."""
    out = []
    for t in token_ids:
        d = detok.add([t])
        out.append(d)
        if d.stop_string is not None:
            break
    return out


def test_plain_words_stream_one_token_at_a_time(tok):
    d = IncrementalDetokenizer(tok, SamplingParams())
    deltas = [x.new_text for x in stream(d, ids(tok, "hello", "▁world", "▁", "a", "b"))]
    assert deltas == ["hello", " world", " ", "a", "b"]
    assert d.flush() == ""
    assert d.text == "hello world ab"


def test_euro_sign_split_over_three_byte_tokens(tok):
    d = IncrementalDetokenizer(tok, SamplingParams())
    deltas = [x.new_text for x in stream(d, ids(tok, "a") + byte_ids(tok, "€") + ids(tok, "b"))]
    assert deltas == ["a", "", "", "€", "b"]
    assert "\ufffd" not in d.text and d.text == "a€b"


def test_emoji_four_bytes_and_cjk(tok):
    d = IncrementalDetokenizer(tok, SamplingParams())
    seq = ids(tok, "中") + byte_ids(tok, "😀") + ids(tok, "文") + byte_ids(tok, "日")
    deltas = [x.new_text for x in stream(d, seq)]
    assert deltas == ["中", "", "", "", "😀", "文", "", "", "日"]
    assert d.text == "中😀文日" == tok.decode(seq)


def test_many_ids_in_one_add_and_incomplete_tail_held(tok):
    d = IncrementalDetokenizer(tok, SamplingParams())
    euro = byte_ids(tok, "€")
    first = d.add(ids(tok, "hello", "▁") + euro[:2]).new_text  # ends mid-character
    second = d.add(euro[2:]).new_text
    # Byte mode releases the complete characters at once; window mode waits for the whole window.
    assert (first, second) == (("hello ", "€") if is_token_local(tok) else ("", "hello €"))


def test_flush_releases_incomplete_bytes_as_replacement(tok):
    d = IncrementalDetokenizer(tok, SamplingParams())
    added = d.add(ids(tok, "a") + byte_ids(tok, "€")[:2]).new_text
    flushed = d.flush()
    # Byte mode follows Python's UTF-8 decoder (one U+FFFD per broken sequence) and has already
    # released "a"; window mode shows what tokenizers' ByteFallback shows (one per byte).
    if is_token_local(tok):
        assert (added, flushed) == ("a", "\ufffd")
    else:
        assert (added, flushed) == ("", "a\ufffd\ufffd")
    assert d.text == added + flushed
    assert d.flush() == ""


def test_lone_invalid_byte_does_not_block_following_text(tok):
    d = IncrementalDetokenizer(tok, SamplingParams())
    deltas = [x.new_text for x in stream(d, ids(tok, "a", "<0x80>", "b"))]
    # 0x80 can never start a character: byte mode replaces it at once.
    assert deltas == (["a", "\ufffd", "b"] if is_token_local(tok) else ["a", "", "\ufffdb"])


def test_window_mode_keeps_leading_space_context():
    """A Llama-style decoder strips the text's first space: only the first token loses it."""
    t = Tokenizer(build_hf([decoders.Strip(content=" ", left=1, right=0)]), eos_token_ids=[1])
    assert not is_token_local(t)
    d = IncrementalDetokenizer(t, SamplingParams())
    seq = ids(t, "▁hello", "▁world", "▁", "a")
    assert [x.new_text for x in stream(d, seq)] == ["hello", " world", " ", "a"]
    assert d.text == t.decode(seq) == "hello world a"


def test_byte_mode_equals_python_utf8_decoding_of_the_token_bytes():
    tok = Tokenizer(build_hf(), eos_token_ids=[1])
    seq = ids(tok, "a", "<0xF0>", "<0x9F>", "b", "<0xE2>", "<0x82>", "<0xAC>", "<0xC3>") + ids(tok, "<turn|>", "hello")
    d = IncrementalDetokenizer(tok, SamplingParams())
    text = "".join(x.new_text for x in stream(d, seq)) + d.flush()
    raw = b"".join(d.token_bytes(t) for t in seq)
    assert raw == b"a\xf0\x9fb\xe2\x82\xac\xc3<turn|>hello"
    assert text == raw.decode("utf-8", "replace") == "a\ufffdb€\ufffd<turn|>hello"


def test_special_tokens_kept_by_default_and_skipped_on_request(tok):
    seq = ids(tok, "<|channel>", "hello", "<channel|>", "a")
    kept = IncrementalDetokenizer(tok, SamplingParams())
    assert [x.new_text for x in stream(kept, seq)] == ["<|channel>", "hello", "<channel|>", "a"]
    skipped = IncrementalDetokenizer(tok, SamplingParams(skip_special_tokens=True))
    assert "".join(x.new_text for x in stream(skipped, seq)) == "helloa"


def test_stop_string_across_token_boundaries_never_emitted_in_part(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["llo w"]))
    out = stream(d, ids(tok, "he", "l", "l", "o", "▁", "w", "a"))
    assert [x.new_text for x in out] == ["he", "", "", "", "", ""]
    assert out[-1].stop_string == "llo w"
    assert d.text == "he"
    assert d.add(ids(tok, "a")) == DetokDelta("", "llo w")  # finished: nothing more
    assert d.flush() == ""


def test_stop_string_include_in_output(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["ab"], include_stop_str_in_output=True))
    out = stream(d, ids(tok, "c", "a", "b", "c"))
    assert [x.new_text for x in out] == ["c", "", "ab"]
    assert out[-1].stop_string == "ab" and d.text == "cab"


def test_stop_string_at_start(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["END"]))
    out = stream(d, ids(tok, "END", "a"))
    assert out == [DetokDelta("", "END")]
    assert d.text == ""


def test_stop_string_inside_one_token_cuts_text_before_it(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["ll"]))
    out = stream(d, ids(tok, "a", "hello"))
    assert out == [DetokDelta("a", None), DetokDelta("he", "ll")]


def test_false_start_is_released(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["abc"]))
    out = [x.new_text for x in stream(d, ids(tok, "a", "b", "d", "a"))]
    assert out == ["", "", "abd", ""]
    assert d.flush() == "a"
    assert d.text == "abda"


def test_overlapping_stop_strings_first_to_end_wins(tok):
    # "b" ends before "abc" can complete: a char-by-char stream sees it first.
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["abc", "b"]))
    out = stream(d, ids(tok, "x", "ab", "c"))
    assert out == [DetokDelta("x", None), DetokDelta("a", "b")]
    # Same end: the longer (earlier-starting) one wins, so less text is emitted.
    d2 = IncrementalDetokenizer(tok, SamplingParams(stop=["c", "abc"]))
    out2 = stream(d2, ids(tok, "x", "ab", "c"))
    assert out2 == [DetokDelta("x", None), DetokDelta("", None), DetokDelta("", "abc")]


def test_self_overlapping_stop_string(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["aab"]))
    out = stream(d, ids(tok, "a", "a", "a", "b"))
    assert [x.new_text for x in out] == ["", "", "a", ""]
    assert out[-1].stop_string == "aab" and d.text == "a"


def test_stop_string_made_of_special_token_text(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["<turn|>"]))
    out = stream(d, ids(tok, "hello", "<turn|>", "a"))
    assert out == [DetokDelta("hello", None), DetokDelta("", "<turn|>")]


def test_stop_string_with_multibyte_character(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["€"]))
    out = stream(d, ids(tok, "a") + byte_ids(tok, "€") + ids(tok, "b"))
    assert [x.new_text for x in out] == ["a", "", "", ""]
    assert out[-1].stop_string == "€"


def test_min_tokens_defers_stop_strings(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["ab"], min_tokens=3))
    out = stream(d, ids(tok, "a", "b", "x", "a", "b"))
    # "ab" completes at token 2, below min_tokens: plain text. The second one stops.
    assert out == [DetokDelta("", None), DetokDelta("ab", None), DetokDelta("x", None),
                   DetokDelta("", None), DetokDelta("", "ab")]
    # A stop string that starts before min_tokens and completes at it is caught whole.
    d2 = IncrementalDetokenizer(tok, SamplingParams(stop=["ab"], min_tokens=2))
    assert stream(d2, ids(tok, "a", "b")) == [DetokDelta("", None), DetokDelta("", "ab")]


def test_held_text_released_at_flush(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["hello world"]))
    assert d.add(ids(tok, "hello")).new_text == ""
    assert d.add(ids(tok, "▁wor")).new_text == ""
    assert d.flush() == "hello wor"
    assert d.text == "hello wor"


def test_flush_cuts_stop_completed_by_pending_tokens(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["ab"]))
    seq = ids(tok, "c", "ab") + byte_ids(tok, "€")[:1]
    if is_token_local(tok):
        assert d.add(seq) == DetokDelta("c", "ab")  # bytes: text before the tail is decoded now
        assert d.flush() == ""
    else:
        # Window mode: "ab" sits before an incomplete byte, so add() released nothing.
        assert d.add(seq).new_text == ""
        assert d.flush() == "c"
    assert d.stop_string == "ab" and d.text == "c"


def test_window_stays_small(tok):
    """Each add decodes only the tokens since the previous release (O(new tokens))."""
    calls: list[int] = []

    class Counting:
        def decode(self, token_ids, skip_special_tokens=False):
            calls.append(len(token_ids))
            return tok.decode(token_ids, skip_special_tokens)

    d = IncrementalDetokenizer(Counting(), SamplingParams())
    for _ in range(200):
        d.add(ids(tok, "a"))
    assert max(calls) <= 2
    assert d.text == "a" * 200


def test_token_text_and_bytes(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(skip_special_tokens=True))
    assert d.token_text(ids(tok, "<turn|>")[0]) == "<turn|>"  # kept even when skipping in text
    assert d.token_text(ids(tok, "▁hello")[0]) == " hello"
    assert d.token_text(ids(tok, "<0xE2>")[0]) == "\ufffd"
    assert d.token_bytes(ids(tok, "<0xE2>")[0]) == b"\xe2"
    assert d.token_bytes(ids(tok, "中")[0]) == "中".encode()


def test_matcher_without_stops_passes_everything():
    m = StopStringMatcher([])
    assert m.feed("abc") == ("abc", None)
    assert m.flush() == ""


def test_matcher_is_independent_of_chunking():
    text = "xx the end. Final answer: 42 STOPPED"
    stops = ["answer:", "end.", "42"]
    whole = StopStringMatcher(stops)
    expected = whole.feed(text)
    for size in (1, 2, 3, 5, 7):
        m = StopStringMatcher(stops)
        emitted, stop = "", None
        for k in range(0, len(text), size):
            out, stop = m.feed(text[k : k + size])
            emitted += out
            if stop:
                break
        assert (emitted, stop) == expected == ("xx the ", "end.")


def test_matcher_long_stop_string_holds_only_a_matching_suffix():
    stop = "x" * 5000 + "END"
    m = StopStringMatcher([stop])
    assert m.feed("abc" + "x" * 100) == ("abc", None)
    assert m.held == "x" * 100
    assert m.feed("y") == ("x" * 100 + "y", None)
    assert m.feed("x" * 5000 + "EN") == ("", None)
    assert m.feed("D!") == ("", stop)


def test_matcher_holds_the_longest_prefix_among_stops():
    m = StopStringMatcher(["abcd", "cdx"])
    assert m.feed("zzabc") == ("zz", None)  # "abc" (of abcd) beats "c" (of cdx)
    assert m.held == "abc"
    assert m.feed("dq") == ("", "abcd")
