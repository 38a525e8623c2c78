"""Turns wire requests into engine inputs: SamplingParams, the thinking plan, grammar constraints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gemmaserve.api.errors import APIError
from gemmaserve.protocol.chat import ChatCompletionRequest
from gemmaserve.protocol.common import SamplingFields
from gemmaserve.types import SamplingParams

# OpenRouter's effort -> share of max_tokens when a model only takes a thinking budget (spec §2.5).
EFFORT_RATIOS = {"max": 0.95, "xhigh": 0.95, "high": 0.8, "medium": 0.5, "low": 0.2, "minimal": 0.1}


@dataclass(frozen=True)
class ReasoningPlan:
    """Whether the template turns thinking on, whether the text is returned, and its token cap."""

    enabled: bool
    exclude: bool
    budget: int | None  # max thinking tokens before <channel|> is forced; None = no cap


def _effort(req: ChatCompletionRequest) -> str | None:
    return (req.reasoning.effort if req.reasoning is not None else None) or req.reasoning_effort


def thinking_enabled(req: ChatCompletionRequest) -> bool:
    """Gemma 4 thinking is a template switch, off unless asked for (the model card says
    default_enabled false). `reasoning: {}` is what include_reasoning: true stands for."""
    r = req.reasoning
    effort = _effort(req)
    if (r is not None and r.enabled is False) or effort == "none":
        return False
    if r is not None or effort is not None:
        return True
    return bool(req.include_reasoning)


def plan_reasoning(req: ChatCompletionRequest, max_tokens: int | None) -> ReasoningPlan:
    """`reasoning.max_tokens` caps thinking directly; otherwise the effort (default medium) takes
    its OpenRouter share of the request's max_tokens when the client set one."""
    r = req.reasoning
    effort = _effort(req)
    enabled = thinking_enabled(req)
    exclude = bool(r is not None and r.exclude)
    if not enabled:
        return ReasoningPlan(False, exclude, None)
    budget: int | None = None
    if r is not None and r.max_tokens is not None:
        budget = r.max_tokens
    elif max_tokens is not None and req.requested_max_tokens is not None:
        budget = max(1, int(EFFORT_RATIOS[effort or "medium"] * max_tokens))
    if budget is not None and max_tokens is not None:
        # Leave at least one token after the thought for the answer to start.
        budget = max(0, min(budget, max_tokens - 1))
    return ReasoningPlan(True, exclude, budget)


def _too_long(max_model_len: int, prompt_len: int, requested: int | None, at_least: bool = False) -> APIError:
    return APIError(
        400,
        f"This endpoint's maximum context length is {max_model_len} tokens. However, you requested "
        f"{'more than' if at_least else 'about'} {prompt_len + (requested or 0)} tokens ({prompt_len} of text input"
        + (f", {requested} in the output" if requested else "")
        + "). Please reduce the length of either one, or use the context-compression plugin "
        "to compress your prompt automatically.",
        "context_length_exceeded",
        {"provider_name": None},
    )


def completion_limit(req: SamplingFields, prompt_len: int, max_model_len: int) -> int:
    """max_tokens clamped to what fits after the prompt (spec §13.2); 400 when nothing fits."""
    room = max_model_len - prompt_len
    requested = req.requested_max_tokens
    if room <= 0:
        raise _too_long(max_model_len, prompt_len, requested)
    return room if requested is None else min(requested, room)


def char_budget(tokenizer: Any, max_model_len: int) -> int:
    """Characters that cannot fit in `max_model_len` tokens whatever they are: a token covers at
    most max_token_chars characters, doubled for safety (normalisation, byte fallback)."""
    return 2 * max_model_len * tokenizer.max_token_chars


def refuse_unfittable(n_chars: int, tokenizer: Any, max_model_len: int, req: SamplingFields) -> None:
    """The context-length 400 for a prompt too long to fit, decided from its length before any
    tokenizing (a 7.9 MB prompt took 30 s to tokenize only to be refused)."""
    if n_chars > char_budget(tokenizer, max_model_len):
        at_least = n_chars // (2 * tokenizer.max_token_chars)
        raise _too_long(max_model_len, at_least, req.requested_max_tokens, at_least=True)


def trim_for_middle_out(text: str, tokenizer: Any, max_model_len: int) -> str:
    """A raw prompt's middle cut down to what middle-out could keep: the head and tail each hold
    enough characters for max_model_len tokens, so the ids middle_out_ids keeps are unchanged, and
    the cut text is all that gets tokenized."""
    keep = char_budget(tokenizer, max_model_len)
    if len(text) <= 2 * keep:
        return text
    return text[:keep] + text[len(text) - keep:]


def _logit_bias(raw: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (raw or {}).items():
        try:
            tid = int(key)
        except ValueError:
            raise APIError(400, f"Invalid value for 'logit_bias': key {key!r} is not a token id", "invalid_request",
                           {"param": "logit_bias"}) from None
        if not 0 <= tid < vocab_size:
            raise APIError(400, f"Invalid value for 'logit_bias': token id {tid} is outside the vocabulary "
                           f"(0..{vocab_size - 1})", "invalid_request", {"param": "logit_bias"})
        out[tid] = float(value)
    return out


def build_sampling_params(
    req: SamplingFields,
    *,
    max_tokens: int,
    vocab_size: int,
    defaults: dict[str, Any],
    logprobs: int | None,
) -> SamplingParams:
    """Unset fields fall back to the checkpoint's generation_config, as an upstream engine would:
    OpenRouter forwards only what the client sent (spec §2.1)."""

    if req.min_tokens > max_tokens:
        raise APIError(400, f"Invalid value for 'min_tokens': {req.min_tokens} is more than the {max_tokens} tokens "
                       "this request may generate", "invalid_request", {"param": "min_tokens"})

    def pick(name: str, neutral):
        value = getattr(req, name)
        if value is not None:
            return value
        return defaults.get(name, neutral)

    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=req.min_tokens,
        temperature=float(pick("temperature", 1.0)),
        top_p=float(pick("top_p", 1.0)),
        top_k=int(pick("top_k", 0)),
        min_p=float(pick("min_p", 0.0)),
        top_a=float(req.top_a or 0.0),  # the sampler applies it after the request's constraints
        frequency_penalty=float(req.frequency_penalty or 0.0),
        presence_penalty=float(req.presence_penalty or 0.0),
        repetition_penalty=float(req.repetition_penalty if req.repetition_penalty is not None else 1.0),
        logit_bias=_logit_bias(req.logit_bias, vocab_size),
        seed=req.seed,
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        skip_special_tokens=False,  # the output parsers need the markers
    )
