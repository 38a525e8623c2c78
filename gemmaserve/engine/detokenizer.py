"""Incremental detokenization: generated ids -> text deltas, whole UTF-8 characters only, stop strings cut."""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from gemmaserve.engine.stop import StopStringMatcher
from gemmaserve.types import SamplingParams

_REPLACEMENT = "\ufffd"
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
# Decoder steps that act on each token alone (Fuse only concatenates): with only these, a text is
# the concatenation of its tokens' bytes, which is what byte mode relies on. Gemma's is exactly
# Replace("▁", " ") + ByteFallback + Fuse.
_TOKEN_LOCAL_DECODERS = {"Replace", "ByteFallback", "Fuse"}


def is_token_local(tokenizer: Any) -> bool:
    """True when `tokenizer.hf`'s decoder only has token-local steps (see _TOKEN_LOCAL_DECODERS)."""
    dec = getattr(getattr(tokenizer, "hf", None), "decoder", None)
    if dec is None:  # no decoder: tokenizers joins tokens with spaces
        return False
    try:
        state = json.loads(dec.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return False
    steps = state.get("decoders", []) if state.get("type") == "Sequence" else [state]
    return bool(steps) and all(step.get("type") in _TOKEN_LOCAL_DECODERS for step in steps)


class _Decoder(Protocol):
    """What the detokenizer needs from gemmaserve.tokenizer.Tokenizer."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


@dataclass
class DetokDelta:
    new_text: str
    stop_string: str | None = None  # set when a stop string matched: the request must finish


class IncrementalDetokenizer:
    """Turns the generated ids of one request into text, a few tokens at a time.

    Byte mode (Gemma's tokenizer and any whose decoder is token-local): each token contributes
    fixed bytes (the byte of a <0xNN> fallback token, else the UTF-8 of its text) and a streaming
    UTF-8 decoder turns them into text. The text is then exactly
    b"".join(token bytes).decode("utf-8", "replace") however the ids are chunked: a character
    split over byte tokens waits for its last byte, an impossible byte becomes U+FFFD at once.
    (tokenizers' ByteFallback replaces a whole run of byte tokens when any byte in it is invalid,
    so on garbage bytes our text may keep valid characters a full decode would not; on valid UTF-8
    the two agree.)

    Window mode (other decoders, e.g. a SentencePiece one that strips the leading space) uses
    the prefix/read-offset window of vLLM and TGI: the text of the new tokens is
    decode(ids[prefix:]) minus decode(ids[prefix:read]), where ids[prefix:read] are the last
    tokens already turned into text (kept as context so that decoders that strip or merge at the
    start of a sequence, like SentencePiece's leading-space handling, see the same left context).
    The window only spans tokens since the previous release, so each step is O(new tokens).
    While the window's text ends in U+FFFD the last character is still incomplete (a byte-fallback
    token such as <0xE2> waits for its continuation bytes) and nothing is released.
    """

    def __init__(self, tokenizer: Any, params: SamplingParams):
        self._tok: _Decoder = tokenizer
        self._skip_special = params.skip_special_tokens
        self._min_tokens = params.min_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window (context tokens, already released)
        self._read = 0  # ids before this are turned into text
        self._stop = StopStringMatcher(params.stop, params.include_stop_str_in_output)
        self._byte_mode = is_token_local(tokenizer)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []  # emitted text, joined lazily by .text
        self._token_text: dict[int, str] = {}
        self._finished = False

    @property
    def text(self) -> str:
        """All text emitted so far (add + flush)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def stop_string(self) -> str | None:
        return self._stop.matched

    def add(self, token_ids: list[int]) -> DetokDelta:
        """Feed newly generated ids; returns DetokDelta(new_text, stop_string). new_text never
        ends in a broken UTF-8 character and never contains any part of a stop string. When a stop
        string matches, new_text holds the text before it (plus the stop string itself when
        params.include_stop_str_in_output) and stop_string names it; the request must then finish."""
        if self._finished:
            return DetokDelta("", self._stop.matched)
        self._ids.extend(token_ids)
        decoded = self._decode_window(force=False)
        # Stop strings count only once min_tokens tokens exist (the token reaching it included).
        released, stop = self._stop.feed(decoded, active=len(self._ids) >= self._min_tokens)
        if stop is not None:
            self._finished = True
        self._emit(released)
        return DetokDelta(released, stop)

    def flush(self) -> str:
        """At finish (length/eos): release held-back text, incomplete trailing bytes included
        (as U+FFFD). A stop string that completes in that final text still cuts it: the stop
        string is never emitted."""
        if self._finished:
            return ""
        self._finished = True
        decoded = self._decode_window(force=True)
        released, stop = self._stop.feed(decoded, active=len(self._ids) >= self._min_tokens)
        if stop is None:
            released += self._stop.flush()
        self._emit(released)
        return released

    def token_text(self, token_id: int) -> str:
        """One token's text for logprobs, special tokens kept (a lone byte token shows U+FFFD;
        token_bytes gives its raw byte)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._tok.decode([token_id], skip_special_tokens=False)
            if len(self._token_text) < 65536:  # bound the cache: logprobs touch many ids
                self._token_text[token_id] = text
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """One token's raw bytes (OpenAI's logprobs `bytes`): the byte of a <0xNN> fallback
        token, else the UTF-8 of its text."""
        return self._piece_bytes(token_id, skip_special=False)

    # -- internals ------------------------------------------------------------------------------
    def _decode_window(self, force: bool) -> str:
        """Text of ids[read:] given the context ids[prefix:read]; '' while incomplete."""
        if self._byte_mode:
            data = b"".join(self._piece_bytes(t, self._skip_special) for t in self._ids[self._read :])
            self._read = len(self._ids)
            # The decoder keeps an incomplete trailing sequence (<= 3 bytes) for the next call.
            return self._utf8.decode(data, final=force)
        if self._read >= len(self._ids):
            return ""
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read], skip_special_tokens=self._skip_special)
        full = self._tok.decode(self._ids[self._prefix :], skip_special_tokens=self._skip_special)
        if not force and (full.endswith(_REPLACEMENT) or len(full) < len(prefix_text)):
            return ""  # last character still incomplete: wait for more bytes
        # On valid UTF-8 the context's text is stable, so the new text is what follows it. (On
        # garbage bytes ByteFallback may turn context characters into U+FFFDs; only those shift.)
        new = full[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self._ids)
        return new

    def _piece_bytes(self, token_id: int, skip_special: bool) -> bytes:
        """A token's bytes: its <0xNN> byte, else the UTF-8 of its own text."""
        id_to_token = getattr(self._tok, "id_to_token", None)
        piece = id_to_token(token_id) if callable(id_to_token) else None
        m = _BYTE_TOKEN.match(piece) if isinstance(piece, str) else None
        if m:
            return bytes([int(m.group(1), 16)])
        if not skip_special:
            return self.token_text(token_id).encode("utf-8")
        return self._tok.decode([token_id], skip_special_tokens=True).encode("utf-8")

    def _emit(self, text: str) -> None:
        if text:
            self._parts.append(text)
