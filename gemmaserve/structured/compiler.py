"""Grammar compilation for one tokenizer: llguidance token trie, marker ids, compiled-grammar cache."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import llguidance as llg


class SchemaError(ValueError):
    """A response_format schema or tool schema we cannot turn into a grammar (the API answers 400).
    The message is user-facing: it names what is wrong, without internal grammar text."""


class ConstraintError(RuntimeError):
    """The grammar matcher failed while generating (a token outside the grammar was sampled, or the
    grammar left no legal token). Masks make this impossible in normal operation; when it happens
    it is a bug or a conflicting constraint, and the engine fails just this request."""


@dataclass(frozen=True)
class MarkerIds:
    """Gemma 4 control-token ids (spec §3), looked up by token text in the tokenizer's vocab."""

    eos: int  # <eos>
    tool_call_start: int  # <|tool_call>
    tool_call_end: int  # <tool_call|>
    tool_response_start: int  # <|tool_response>
    string_delim: int  # <|"|>
    channel_start: int  # <|channel>
    channel_end: int  # <channel|>
    turn_end: int  # <turn|>


_MARKER_TEXT = {
    "eos": "<eos>",
    "tool_call_start": "<|tool_call>",
    "tool_call_end": "<tool_call|>",
    "tool_response_start": "<|tool_response>",
    "string_delim": '<|"|>',
    "channel_start": "<|channel>",
    "channel_end": "<channel|>",
    "turn_end": "<turn|>",
}

# llguidance reports errors as "at L(C): <message lines>" then a numbered grammar excerpt with a
# caret; users get the message lines only (the grammar is ours, not theirs).
_LLG_PREFIX_RE = re.compile(r"^(?:at \d+\(\d+\): )?(?:failed to compile JSON schema: )?")
_EXCERPT_RE = re.compile(r"^\s*\d+ \| ")


def _hf_tokenizer(tokenizer: Any) -> Any:
    """The tokenizers.Tokenizer behind a gemmaserve Tokenizer (`.hf`) or the object itself."""
    return getattr(tokenizer, "hf", tokenizer)


class GrammarCompiler:
    """Compiles Lark grammars (llguidance dialect) against one tokenizer and caches the results.

    Building the token trie costs about a second for the real 262k vocabulary, and compiling a
    grammar tens to hundreds of milliseconds, so a server makes one GrammarCompiler per model and
    passes it to the factories in place of the tokenizer. The cache key is (grammar text, this
    compiler's tokenizer); each request gets a deep copy of the cached matcher, never the matcher
    itself (matchers are stateful). Thread-safe: the API may compile from worker threads.
    """

    def __init__(self, tokenizer: Any, *, cache_size: int = 128) -> None:
        hf = _hf_tokenizer(tokenizer)
        ids: dict[str, int] = {}
        for name, text in _MARKER_TEXT.items():
            tid = hf.token_to_id(text)
            if tid is None:
                raise ValueError(f"tokenizer has no {text} token: not a Gemma 4 vocabulary")
            ids[name] = tid
        self.markers = MarkerIds(**ids)
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        # llguidance's own EOS only matters once a grammar is accepting; ours end with explicit end
        # tokens, so <eos> is just a safe choice here.
        self.ll_tokenizer = llg.LLTokenizer(hf.to_str(), n_vocab=self.vocab_size, eos_token=ids["eos"])
        self._cache_size = cache_size
        self._cache: OrderedDict[str, llg.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, grammar: str, *, lark: bool = True) -> llg.LLMatcher:
        """A fresh matcher for a Lark grammar or, with lark=False, an llguidance top-level grammar
        in JSON (several named grammars, e.g. a client's grammar nested in ours); raises
        SchemaError if it does not compile."""
        with self._lock:
            template = self._cache.get(grammar)
            if template is not None:
                self._cache.move_to_end(grammar)
                return template.deep_copy()
        template = self._compile(llg.LLMatcher.grammar_from_lark(grammar) if lark else grammar)  # outside the lock
        with self._lock:
            self._cache[grammar] = template
            self._cache.move_to_end(grammar)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return template.deep_copy()

    def _compile(self, top_level: str) -> llg.LLMatcher:
        # Validate first: it returns the error text, whereas a bad LLMatcher only enters an error state.
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(top_level, self.ll_tokenizer)
        if is_error:
            raise SchemaError(_user_message(messages[0] if messages else "invalid grammar"))
        matcher = llg.LLMatcher(self.ll_tokenizer, top_level, log_level=0)
        if matcher.is_error():
            raise SchemaError(_user_message(matcher.get_error()))
        return matcher

    def cache_len(self) -> int:
        with self._lock:
            return len(self._cache)


# Caps checked before compiling, since compile time grows faster than linearly with grammar size:
# a tool whose parameter had a 20,000-value enum compiled in 2.6 s, 50,000 values ran 19 s and
# then panicked inside llguidance (more than 65k grammar symbols). 10,000 schema nodes compile in
# well under a second; real schemas are a few hundred.
MAX_SCHEMA_NODES = 10_000
MAX_GRAMMAR_CHARS = 100_000


def check_schema_size(schema: Any, what: str) -> None:
    """SchemaError unless `schema` (JSON) has at most MAX_SCHEMA_NODES values, counted without
    recursion (depth is bounded before this, at the API's body checks)."""
    count, stack = 0, [schema]
    while stack:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        if count > MAX_SCHEMA_NODES:
            raise SchemaError(f"{what} is too large to enforce: more than {MAX_SCHEMA_NODES} JSON values "
                              "(enum entries, properties, ...)")


def check_grammar_size(grammar: str) -> None:
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise SchemaError(f"the grammar is too large to enforce: {len(grammar)} characters, at most {MAX_GRAMMAR_CHARS}")


def _user_message(raw: str) -> str:
    if "panic" in raw or "<backtrace>" in raw:
        # A Rust assertion (with a backtrace) inside llguidance: not the client's to read.
        return "the grammar is too large or complex to compile"
    lines = []
    for line in raw.strip().splitlines():
        if _EXCERPT_RE.match(line):
            break
        if line.strip() and line.strip() != "^":
            lines.append(line.strip())
    msg = _LLG_PREFIX_RE.sub("", " ".join(lines)).strip()
    return msg or "invalid grammar"


def as_compiler(tokenizer: Any) -> GrammarCompiler:
    """Accept a GrammarCompiler (preferred: it keeps the cache) or any tokenizer it can wrap."""
    if isinstance(tokenizer, GrammarCompiler):
        return tokenizer
    return GrammarCompiler(tokenizer)
