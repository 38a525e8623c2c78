"""Offline generation in vLLM's shape: `LLM(model=...).generate(prompts, params)`."""

from __future__ import annotations

import re
from typing import Sequence, Union

from gemmaserve.config import engine_config_from_kwargs
from gemmaserve.engine.engine import Engine
from gemmaserve.types import MediaInput, MultimodalPrompt, RequestOutput, SamplingParams

PromptType = Union[str, Sequence[int], MultimodalPrompt]
_PLACEHOLDER = re.compile(r"<\|image\|>|<\|video\|>")


def expand_media_text(text: str, media: Sequence[MediaInput]) -> str:
    """Each <|image|> / <|video|> placeholder of `text` replaced, in order, by its media's soft-token
    run (MediaInput.prompt_text: transformers' Gemma4Processor text expansion)."""
    it = iter(media)

    def sub(m: re.Match) -> str:
        item = next(it, None)
        want = "image" if m.group() == "<|image|>" else "video"
        if item is None or item.kind != want:
            raise ValueError(f"the prompt's placeholders do not match the media (a {want} placeholder)")
        return item.prompt_text()

    out = _PLACEHOLDER.sub(sub, text)
    if next(it, None) is not None:
        raise ValueError("more media than <|image|> / <|video|> placeholders in the prompt")
    return out


class LLM:
    """Loads a checkpoint once and generates for batches of prompts, all batched together by
    the same scheduler the server uses. Extra keyword arguments are engine options
    (max_model_len, max_num_seqs, max_num_batched_tokens, block_size, enable_prefix_caching,
    kv_cache_memory_bytes, quantization, dummy_weights, seed, ...)."""

    def __init__(self, model: str, dtype: str = "bfloat16", device: str = "cpu", **engine_kwargs):
        self.engine = Engine.from_config(engine_config_from_kwargs(model=str(model), dtype=dtype, device=device, **engine_kwargs))
        self.tokenizer = self.engine.tokenizer
        self._counter = 0

    @classmethod
    def from_engine(cls, engine: Engine) -> "LLM":
        """Wrap an already built engine (tests, embedding in other tools)."""
        llm = cls.__new__(cls)
        llm.engine, llm.tokenizer, llm._counter = engine, engine.tokenizer, 0
        return llm

    def encode(self, prompt: str) -> list[int]:
        """Raw text -> ids with the tokenizer's <bos> in front, as vLLM does for plain prompts."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token-id prompts")
        return self.tokenizer.encode_prompt(prompt)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """One final RequestOutput per prompt, in prompt order. `prompts` is a string, a list of
        strings, one list of token ids, a list of token-id lists, or MultimodalPrompts (text with
        image/video placeholders and their MediaInputs, made by gemmaserve.media's load_image / load_video)."""
        items = [prompts] if isinstance(prompts, (str, MultimodalPrompt)) else list(prompts)
        media = [list(p.media) if isinstance(p, MultimodalPrompt) else None for p in items]
        batch = self._normalise(prompts)
        if sampling_params is None:
            params = [SamplingParams() for _ in batch]
        elif isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(batch)
        else:
            params = list(sampling_params)
            if len(params) != len(batch):
                raise ValueError(f"{len(params)} sampling params for {len(batch)} prompts")
        ids = []
        try:
            for prompt, sp, mm in zip(batch, params, media if len(media) == len(batch) else [None] * len(batch)):
                rid = f"llm-{self._counter}"
                self._counter += 1
                self.engine.add_request(rid, prompt, sp, mm)
                ids.append(rid)
            finals: dict[str, RequestOutput] = {}
            while len(finals) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        finals[out.request_id] = out
        finally:
            for rid in ids:  # on any error, leave no request behind in the engine
                self.engine.abort(rid)
        return [finals[rid] for rid in ids]

    def _normalise(self, prompts: PromptType | Sequence[PromptType]) -> list[list[int]]:
        if isinstance(prompts, (str, MultimodalPrompt)):
            prompts = [prompts]
        prompts = list(prompts)
        if prompts and all(isinstance(p, int) for p in prompts):
            return [[int(p) for p in prompts]]
        return [self._ids(p) for p in prompts]

    def _ids(self, p: PromptType) -> list[int]:
        if isinstance(p, MultimodalPrompt):
            return self.encode(expand_media_text(p.text, p.media))
        return self.encode(p) if isinstance(p, str) else [int(t) for t in p]
