"""Tests for gemmaserve.tokenizer on the demo tokenizer: ids, round trips, control tokens, parity."""

from __future__ import annotations

import json

import pytest

from gemmaserve.demo import write_demo_model
from gemmaserve.tokenizer import Tokenizer

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  ",
    "line one\nline two\n\n\tindented",
    "Unicode: é ü ñ ß 日本語 中文 🙂👍🏽 Ωμέγα",
    '{"name": "get_weather", "arguments": {"location": "Paris"}}',
    "<|turn>user\nHi there<turn|>\n<|turn>model\n<|channel>thought\nhmm<channel|>Answer<turn|>",
    '<|tool_call>call:f{a:<|"|>x<|"|>}<tool_call|><|tool_response>',
    "",
]


@pytest.fixture(scope="module")
def tok(demo_tokenizer):
    return demo_tokenizer


def test_named_ids_are_the_real_gemma4_ids(tok):
    assert (tok.bos_token_id, tok.pad_token_id) == (2, 0)
    assert tok.eos_token_ids == [1, 106, 50]
    assert (tok.turn_start, tok.turn_end) == (105, 106)
    assert (tok.channel_start, tok.channel_end) == (100, 101)
    assert (tok.tool_call_start, tok.tool_call_end) == (48, 49)
    assert (tok.tool_response_start, tok.tool_response_end) == (50, 51)
    assert (tok.tool_start, tok.tool_end) == (46, 47)
    assert tok.string_delim == 52 and tok.think == 98
    assert tok.token_to_id("\n") == 107
    assert tok.id_to_token(106) == "<turn|>"
    # Media markers exceed the 512 vocab: they sit at the top, in real-id order.
    assert [tok.marker_id(n) for n in ("image_start", "audio_start", "image_token", "audio_token",
                                      "image_end", "audio_end", "video_token")] == list(range(505, 512))
    assert tok.vocab_size == 512


def test_special_ids_are_exactly_the_control_tokens(tok):
    assert tok.special_ids == {0, 1, 2, 3, 4, 46, 47, 48, 49, 50, 51, 52, 98, 100, 101, 105, 106,
                               *range(505, 512)}


def test_chat_template_and_generation_defaults(tok, demo_dir):
    assert tok.chat_template == (demo_dir / "chat_template.jinja").read_text(encoding="utf-8")
    assert tok.generation_defaults == {"temperature": 1.0, "top_p": 0.95, "top_k": 64}


def test_chat_template_falls_back_to_tokenizer_config(tmp_path):
    d = write_demo_model(tmp_path / "m", "tiny", write_weights=False)
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ bos_token }}X"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_dir(d).chat_template == "{{ bos_token }}X"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_keeps_every_byte(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_encode_never_adds_bos_and_maps_control_text_to_ids(tok):
    ids = tok.encode("<bos><|turn>user\nhi<turn|>")
    assert ids[:2] == [2, 105]
    assert ids[-1] == 106
    assert tok.encode("hi")[0] != 2
    assert tok.encode("") == []


def test_multibyte_characters_use_byte_fallback(tok):
    ids = tok.encode("🙂")
    # U+1F642 is F0 9F 99 82 in UTF-8; no learned piece covers it, so four byte tokens.
    assert [tok.id_to_token(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert tok.decode(ids) == "🙂"
    # A partial character decodes to one U+FFFD per byte: the detokenizer must hold it back.
    assert tok.decode(ids[:2]) == "\ufffd\ufffd"
    assert tok.decode(tok.encode("é")) == "é"


def test_ordinary_words_are_single_pieces(tok):
    for word in (" the", " model", " user"):
        assert len(tok.encode(word)) == 1, word


def test_decode_keeps_or_skips_control_tokens(tok):
    ids = tok.encode("<|channel>thought\nx<channel|>done<turn|>")
    assert tok.decode(ids) == "<|channel>thought\nx<channel|>done<turn|>"
    assert tok.decode(ids, skip_special_tokens=True) == "thought\nxdone"


def test_same_ids_as_transformers_autotokenizer(tok, demo_dir):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(demo_dir))
    for text in TEXTS:
        assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
        ids = tok.encode(text)
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    # transformers adds BOS itself; ours never does (the chat template emits <bos>).
    assert ref("hi")["input_ids"] == [2] + tok.encode("hi")
    assert ref.sot_token == "<|turn>" and ref.eoc_token == "<channel|>" and ref.escape_token == '<|"|>'
    assert ref.convert_tokens_to_ids(ref.think_token) == 98


def test_suppressed_ids_are_found_by_text_and_written_to_generation_config(tok, demo_dir):
    names = ["<pad>", "<bos>", "<|image>", "<image|>", "<|audio>", "<audio|>", "<|image|>", "<|audio|>", "<|video|>"]
    ids = sorted(tok.token_to_id(n) for n in names)
    assert None not in ids and ids[:2] == [0, 2]
    assert tok.suppress_token_ids == ids
    # transformers' generate reads the same list, so the demo model's reference masks what we mask.
    assert json.loads((demo_dir / "generation_config.json").read_text())["suppress_tokens"] == ids


def test_suppressed_ids_at_gemma_4_real_ids():
    """In the full 262k vocabulary the by-text set lands on spec §3's ids: <pad>, <bos>, the media
    begin markers, the soft-token placeholders and <image|>/<audio|> (generation_config's pair)."""
    from gemmaserve.demo_tokenizer import build_demo_tokenizer

    tok = Tokenizer(build_demo_tokenizer(262144))
    assert tok.suppress_token_ids == [0, 2, 255999, 256000, 258880, 258881, 258882, 258883, 258884]
    assert Tokenizer(build_demo_tokenizer(262144), suppress_tokens=[7]).suppress_token_ids[:3] == [0, 2, 7]
