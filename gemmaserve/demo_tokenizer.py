"""Builds the demo model's byte-fallback BPE tokenizer.json with Gemma 4's control tokens at their ids."""

from __future__ import annotations

import json

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

# Control tokens of spec §3 at their real ids. Everything here is an added, special token.
CONTROL_TOKENS: dict[int, str] = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    4: "<mask>",
    46: "<|tool>",
    47: "<tool|>",
    48: "<|tool_call>",
    49: "<tool_call|>",
    50: "<|tool_response>",
    51: "<tool_response|>",
    52: '<|"|>',
    98: "<|think|>",
    100: "<|channel>",
    101: "<channel|>",
    105: "<|turn>",
    106: "<turn|>",
}
NEWLINE_ID = 107  # "\n" is an ordinary token at 107 in the real vocabulary
# Multimodal markers (real ids 255999..258884); in a smaller vocab they take the top ids, in order.
MEDIA_TOKENS: dict[int, str] = {
    255_999: "<|image>",
    256_000: "<|audio>",
    258_880: "<|image|>",
    258_881: "<|audio|>",
    258_882: "<image|>",
    258_883: "<audio|>",
    258_884: "<|video|>",
}
# The fewest ids that hold the controls, "\n", 256 byte tokens and the media markers.
MIN_VOCAB = NEWLINE_ID + 1 + 256 + len(MEDIA_TOKENS)

# An embedded English corpus, so the BPE learns ordinary word pieces. Deterministic training
# input: the same text always gives the same merges.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still show how a large one works.
This is a demo model with random weights: it has the real layout, the real tensor names and the
real control tokens, but its answers are noise. Use it to test the server, not to read the output.
Hello, world! How are you today? I am fine, thank you. What is the weather like where you are?
It is sunny and warm in the morning, cloudy in the afternoon, and it may rain in the evening.
The server accepts a request, renders the conversation into tokens, and sends them to the engine.
The engine schedules requests, runs the model one step at a time, and samples the next token.
Each token is turned back into text and streamed to the client as soon as it is ready.
Please write a short poem about the sea. The sea is wide and blue; the waves come and go.
Tell me a story about a cat who lived in a library and read every book on every shelf.
Once upon a time there was a little girl who wanted to see the mountains and the stars.
She walked for many days through forests and fields, over rivers and under the open sky.
When she reached the top of the highest mountain, she saw the whole world below her.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 20 32 64 100 128 256 512 1000 1024 2024 2025 2026.
Code: def main(): return {"name": "value", "items": [1, 2, 3], "ok": true, "none": null}
JSON objects have keys and values; arrays hold lists of things; strings are wrapped in quotes.
The function get_weather takes a location and a unit, and returns the current temperature.
Call the tool with the arguments, wait for the result, then answer the user in plain words.
Think step by step. First, read the question. Second, find the facts. Third, write the answer.
Why is the sky blue? Because air scatters blue light from the sun more than it scatters red.
How many days are in a week? There are seven days in a week and twelve months in a year.
Which city is the capital of France? Paris is the capital of France, and Berlin of Germany.
We should test every path: the start of a request, each step, the stop, the error and the end.
Good morning, good evening, good night. Yes, no, maybe, always, never, sometimes, often.
The people of the town met in the square to talk about the new bridge over the river.
Time flies like an arrow; fruit flies like a banana. Simple words make clear sentences.
Computers store text as bytes, and a tokenizer splits the text into pieces called tokens.
Some languages use letters that need more than one byte, like é, ü, ñ, ß, 日本語 and 中文.
An apple a day keeps the doctor away. Water is wet, fire is hot, ice is cold, and snow is white.
The teacher asked the students to open their books and read the first chapter out loud.
They played games, sang songs, cooked dinner together, and laughed late into the night.
If you have any questions, ask me and I will do my best to help you find the answer.
system user model assistant tool: the system sets the rules, the user asks, the model answers.
user: Hello! model: Hello, how can I help you? user: Say hello to the world. model: Hello, world!
system: You are a helpful assistant. user: What time is it? model: I do not know the time.
thought: the user wants a tool call; call get_weather with location "London" and unit "celsius".
"""


def build_demo_tokenizer(vocab_size: int) -> Tokenizer:
    """A Gemma-style BPE (no prefix space, spaces as "▁", byte fallback) of exactly `vocab_size`
    ids: controls at their real ids, "\\n" at 107, bytes, learned pieces, unused fillers, and the
    media markers at their real ids or, when those exceed the vocab, at its top."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"demo vocab needs at least {MIN_VOCAB} ids, got {vocab_size}")
    media_ids = _media_ids(vocab_size)
    fixed: dict[int, str] = {**CONTROL_TOKENS, NEWLINE_ID: "\n", **media_ids}
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    # Learned pieces fill what the fixed ids and the bytes leave free.
    free_ids = [i for i in range(vocab_size) if i not in fixed]
    budget = len(free_ids) - len(byte_tokens)
    learned_vocab, merges = _train_pieces(budget)
    pieces = byte_tokens + [p for p in learned_vocab if p != "\n"]
    vocab: dict[str, int] = {tok: i for i, tok in fixed.items()}
    for i, tok in zip(free_ids, pieces):
        vocab[tok] = i
    # Ids left over are "<unused{n}>" fillers, as in the real vocabulary.
    for n, i in enumerate(free_ids[len(pieces):]):
        vocab[f"<unused{n}>"] = i
    assert len(vocab) == vocab_size, (len(vocab), vocab_size)
    merges = [m for m in merges if m[0] + m[1] in vocab]

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    # The same pipeline as transformers' GemmaTokenizer, so both give identical ids.
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = sorted({**CONTROL_TOKENS, **media_ids}.items())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in specials])
    # add_bos_token=true, as in the real file (gemmaserve's Tokenizer never applies it).
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    return tok


def _media_ids(vocab_size: int) -> dict[int, str]:
    if max(MEDIA_TOKENS) < vocab_size:
        return dict(MEDIA_TOKENS)
    top = vocab_size - len(MEDIA_TOKENS)
    return {top + n: t for n, t in enumerate(MEDIA_TOKENS.values())}


def _train_pieces(budget: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Train BPE pieces on CORPUS: at most `budget` tokens (alphabet first, then merges in order)."""
    trainer_tok = Tokenizer(BPE(unk_token=None))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    # Training splits words before each "▁" so pieces never span two words; inference runs
    # GemmaTokenizer's pipeline, where the same merges give the same pieces.
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    alphabet = sorted(set(CORPUS) | set(chr(c) for c in range(33, 127)) | {"▁"})
    alphabet.remove(" ")
    trainer = trainers.BpeTrainer(
        vocab_size=max(budget, len(alphabet)),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        special_tokens=[],
    )
    trainer_tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    data = json.loads(trainer_tok.to_str())["model"]
    ordered = sorted(data["vocab"].items(), key=lambda kv: kv[1])
    pieces = [p for p, _ in ordered][:budget]
    kept = set(pieces)
    merges = []
    for m in data["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in kept and b in kept and a + b in kept:
            merges.append((a, b))
    return pieces, merges
