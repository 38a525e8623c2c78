"""Reads what routing needs from a request body: models, provider preferences, the parameters
it uses, a prompt-size estimate and the session key that sticky routing follows."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping

from gemmaserve.cluster.routing import ProviderPrefs, RouteRequest, RoutingError

# Parameters `require_parameters` checks (OpenRouter's supported_parameters vocabulary).
PARAMETERS = frozenset({
    "frequency_penalty", "include_reasoning", "logit_bias", "logprobs", "max_completion_tokens", "max_tokens",
    "min_p", "parallel_tool_calls", "presence_penalty", "reasoning", "reasoning_effort", "repetition_penalty",
    "response_format", "seed", "stop", "structured_outputs", "temperature", "tool_choice", "tools", "top_k",
    "top_a", "top_logprobs", "top_p", "verbosity", "web_search_options",
})
# A prompt whose first PREFIX_CHARS characters match another's is routed with it: long enough
# that only real shared context (a system prompt, a document, earlier turns) qualifies.
PREFIX_CHARS = 1024


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_text(body: Mapping[str, Any]) -> str:
    """The request's text in order (messages, or the legacy `prompt`), for size and prefix."""
    msgs = body.get("messages")
    if isinstance(msgs, list):
        return "\n".join(f"{m.get('role', '')}: {_text(m.get('content'))}" for m in msgs if isinstance(m, dict))
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def session_key(body: Mapping[str, Any], headers: Mapping[str, str], text: str) -> str | None:
    sid = body.get("session_id") or headers.get("x-session-id")
    if isinstance(sid, str) and sid:
        return "session:" + sid
    if len(text) >= PREFIX_CHARS:
        return "prefix:" + hashlib.sha256(text[:PREFIX_CHARS].encode("utf-8")).hexdigest()
    return None


def route_request(body: Mapping[str, Any], headers: Mapping[str, str], default_model: str,
                  count_tokens: Callable[[str], int] | None = None) -> RouteRequest:
    """The RouteRequest for a chat or completions body; raises RoutingError on a bad `provider`
    or `models` value."""
    models: list[str] = []
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RoutingError(400, "Invalid value for 'model': expected a string", "model")
    fallbacks = body.get("models")
    if fallbacks is not None and (not isinstance(fallbacks, list) or not all(isinstance(m, str) for m in fallbacks)):
        raise RoutingError(400, "Invalid value for 'models': expected an array of strings", "models")
    # OpenRouter tries `models` in order; `model` (when also given) comes first.
    for m in ([model] if model else []) + list(fallbacks or []):
        if m not in models:
            models.append(m)
    text = prompt_text(body)
    # Without a tokenizer, ~4 characters a token: an estimate, only for the context filter.
    tokens = count_tokens(text) if count_tokens is not None else len(text.encode("utf-8")) // 4
    return RouteRequest(
        models=tuple(models) or (default_model,),
        prefs=ProviderPrefs.parse(body.get("provider")),
        parameters=frozenset(k for k in body if k in PARAMETERS),
        prompt_tokens=tokens,
        session_key=session_key(body, headers, text),
    )


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
