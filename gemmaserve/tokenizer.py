"""Gemma 4 tokenizer: tokenizer.json via `tokenizers`, control-token ids, chat template, defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tokenizers import Tokenizer as HFTokenizer

# Gemma 4 markers by role name -> token text (spec §3). Ids are looked up by text, so the same
# names work in the real 262k vocabulary and in the demo model's small one.
MARKERS: dict[str, str] = {
    "turn_start": "<|turn>",
    "turn_end": "<turn|>",
    "channel_start": "<|channel>",
    "channel_end": "<channel|>",
    "tool_call_start": "<|tool_call>",
    "tool_call_end": "<tool_call|>",
    "tool_response_start": "<|tool_response>",
    "tool_response_end": "<tool_response|>",
    "tool_start": "<|tool>",
    "tool_end": "<tool|>",
    "string_delim": '<|"|>',
    "think": "<|think|>",
    "image_start": "<|image>",
    "image_end": "<image|>",
    "image_token": "<|image|>",
    "audio_start": "<|audio>",
    "audio_end": "<audio|>",
    "audio_token": "<|audio|>",
    "video_token": "<|video|>",
}

# Text at least this long is encoded with the GIL released (Tokenizer.encode); shorter text is
# not worth the batch call's overhead.
_GIL_FREE_CHARS = 4096

# generation_config.json of Gemma 4 (spec §6.10): <eos>, <turn|>, <|tool_response>.
DEFAULT_EOS_IDS = (1, 106, 50)

# Tokens a text reply never contains (spec §3, §7), masked to -inf for every request: <pad> and
# <bos> (framing the server adds, never a training target), and every media marker (begin/end and
# the soft-token placeholders: the processor inserts them around media embeddings; a model that
# emits one produces a turn no parser or template can read). Later Gemma 4 generation configs list
# <audio|> and <image|> as suppress_tokens; this is that list widened to the other media markers.
# By text, so the demo vocabulary (markers at other ids) gets the same set.
SUPPRESSED_TOKENS = ("<pad>", "<bos>", "<|image>", "<image|>", "<|audio>", "<audio|>",
                     "<|image|>", "<|audio|>", "<|video|>")


class Tokenizer:
    """Text <-> ids for one checkpoint. `encode` never adds BOS: the chat template emits `<bos>`."""

    def __init__(
        self,
        hf: HFTokenizer,
        *,
        chat_template: str | None = None,
        eos_token_ids: Sequence[int] | None = None,
        bos_token_id: int | None = None,
        pad_token_id: int | None = None,
        generation_defaults: dict[str, Any] | None = None,
        suppress_tokens: Sequence[int] | None = None,
    ) -> None:
        self.hf = hf  # the underlying tokenizers.Tokenizer (grammar libraries take it directly)
        self._max_token_chars: int | None = None
        self.chat_template = chat_template
        self.generation_defaults: dict[str, Any] = dict(generation_defaults or {})
        self.bos_token_id = bos_token_id if bos_token_id is not None else self._id_or_none("<bos>")
        self.pad_token_id = pad_token_id if pad_token_id is not None else self._id_or_none("<pad>")
        if eos_token_ids is None:
            eos_token_ids = [i for i in (self._id_or_none(t) for t in ("<eos>", "<turn|>", "<|tool_response>")) if i is not None]
        self.eos_token_ids: list[int] = list(eos_token_ids)
        # Control tokens: every added token flagged special (the Gemma markers, <bos>, <pad>, ...).
        self.special_ids: set[int] = {
            i for i, tok in hf.get_added_tokens_decoder().items() if tok.special
        }
        self._marker_ids = {name: self._id_or_none(text) for name, text in MARKERS.items()}
        # Never sampled: SUPPRESSED_TOKENS found in this vocabulary plus generation_config's
        # `suppress_tokens` (sorted, unique).
        by_text = (self._id_or_none(t) for t in SUPPRESSED_TOKENS)
        self.suppress_token_ids: list[int] = sorted(
            {i for i in by_text if i is not None} | {int(i) for i in (suppress_tokens or ())}
        )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        """Load tokenizer.json plus the chat template and generation defaults beside it."""
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        hf = HFTokenizer.from_file(str(tok_file))
        # Chat behaviour is ours: never let the file's post-processor add BOS/EOS.
        hf.post_processor = None
        tok_cfg = _read_json(path / "tokenizer_config.json")
        gen_cfg = _read_json(path / "generation_config.json")
        template = None
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(tok_cfg.get("chat_template"), str):
            template = tok_cfg["chat_template"]
        eos = gen_cfg.get("eos_token_id")
        if isinstance(eos, int):
            eos = [eos]
        defaults = {k: gen_cfg[k] for k in ("temperature", "top_p", "top_k") if k in gen_cfg}
        suppress = gen_cfg.get("suppress_tokens")
        if suppress is not None and not (
            isinstance(suppress, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in suppress)
        ):
            raise ValueError(f"generation_config.json suppress_tokens must be a list of token ids, got {suppress!r}")
        return cls(
            hf,
            chat_template=template,
            eos_token_ids=eos,
            bos_token_id=gen_cfg.get("bos_token_id"),
            pad_token_id=gen_cfg.get("pad_token_id"),
            generation_defaults=defaults,
            suppress_tokens=suppress,
        )

    # -- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows (added tokens included); may be below the model's."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def max_token_chars(self) -> int:
        """Characters in the longest vocabulary entry: text of n characters encodes to at least
        n / max_token_chars tokens, a bound that refuses an over-long prompt without tokenizing it."""
        if self._max_token_chars is None:
            self._max_token_chars = max((len(t) for t in self.hf.get_vocab(with_added_tokens=True)), default=1)
        return self._max_token_chars

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(token_id)

    def _id_or_none(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def marker_id(self, name: str) -> int | None:
        """Id of a Gemma 4 marker by role name (see MARKERS), or None if the vocab lacks it."""
        return self._marker_ids[name]

    def require_marker(self, name: str) -> int:
        """Id of a Gemma 4 marker the caller cannot work without (ValueError names it if absent)."""
        tid = self._marker_ids[name]
        if tid is None:
            raise ValueError(f"the tokenizer lacks the control token {MARKERS[name]}")
        return tid

    # Named marker ids (spec §3), as properties so callers get a plain int.
    turn_start = property(lambda self: self._marker_ids["turn_start"])
    turn_end = property(lambda self: self._marker_ids["turn_end"])
    channel_start = property(lambda self: self._marker_ids["channel_start"])
    channel_end = property(lambda self: self._marker_ids["channel_end"])
    tool_call_start = property(lambda self: self._marker_ids["tool_call_start"])
    tool_call_end = property(lambda self: self._marker_ids["tool_call_end"])
    tool_response_start = property(lambda self: self._marker_ids["tool_response_start"])
    tool_response_end = property(lambda self: self._marker_ids["tool_response_end"])
    tool_start = property(lambda self: self._marker_ids["tool_start"])
    tool_end = property(lambda self: self._marker_ids["tool_end"])
    string_delim = property(lambda self: self._marker_ids["string_delim"])
    think = property(lambda self: self._marker_ids["think"])

    # -- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text`; control-token texts inside it map to their ids, no BOS is added.

        Long text goes through `encode_batch`, which releases the GIL while the Rust tokenizer
        runs (`encode` holds it: a 1.2 MB prompt froze every other thread, the event loop and the
        engine's step loop included, for 2 s on the 2-core box; through encode_batch the longest
        pause measured 33 ms). Same ids either way."""
        if len(text) < _GIL_FREE_CHARS:
            return self.hf.encode(text, add_special_tokens=False).ids
        return self.hf.encode_batch([text], add_special_tokens=False)[0].ids

    def encode_prompt(self, text: str) -> list[int]:
        """A raw (untemplated) prompt's ids with <bos> in front unless the text brings its own, as
        vLLM does for text prompts: the one place that rule lives (CLI, LLM and the API use it)."""
        ids = self.encode(text)
        bos = self.bos_token_id
        if bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. Control tokens are kept by default: the chat parsers need them."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos={self.eos_token_ids})"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
