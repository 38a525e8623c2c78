"""A validated chat request -> prompt ids, SamplingParams and the output-parsing settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gemmaserve.api.errors import APIError
from gemmaserve.api.media_input import resolve_media
from gemmaserve.api.sampling import (
    ReasoningPlan,
    build_sampling_params,
    completion_limit,
    plan_reasoning,
    refuse_unfittable,
    thinking_enabled,
    trim_for_middle_out,
)
from gemmaserve.api.state import ServerState
from gemmaserve.chat.constraints import ThinkingBudget
from gemmaserve.chat.middle_out import middle_out, middle_out_ids
from gemmaserve.chat.parser import prompt_ends_in_reasoning
from gemmaserve.chat.prompt import ChatPrompt
from gemmaserve.protocol.chat import ChatCompletionRequest, NamedToolChoice, ResponseFormat
from gemmaserve.structured import (
    GrammarCompiler,
    SchemaError,
    check_schema_size,
    grammar_constraint,
    json_object_constraint,
    json_schema_constraint,
    tool_call_constraint,
)
from gemmaserve.types import MediaInput, SamplingParams


@dataclass
class PreparedChat:
    prompt_ids: list[int]
    params: SamplingParams
    reasoning: ReasoningPlan
    tools: list[dict] | None  # what the output parser types arguments by; None = no tool parsing
    parallel_tool_calls: bool
    starts_in_reasoning: bool = False  # the prompt leaves a thought channel open
    prompt_text: str = ""  # what the engine is asked to continue (for debug.echo_upstream_body)
    media: list[MediaInput] = field(default_factory=list)  # images/videos whose soft tokens the prompt holds


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def _chars_of(content: Any) -> int:
    """Characters of a wire message's text (a lower bound on what it renders to)."""
    if isinstance(content, str):
        return len(content)
    return sum(len(t) for t in (getattr(p, "text", None) for p in content or []) if isinstance(t, str))


def _with_name(msg: dict[str, Any]) -> dict[str, Any]:
    """OpenRouter sends `name` to non-OpenAI models as a "{name}: " content prefix (spec §2.2)."""
    name = msg.pop("name", None)
    if not name or msg["role"] == "tool":
        return msg
    content = msg.get("content")
    if isinstance(content, str):
        msg["content"] = f"{name}: {content}"
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                part["text"] = f"{name}: {part['text']}"
                break
    return msg


def template_messages(req: ChatCompletionRequest, state: ServerState | None = None) -> list[dict[str, Any]]:
    """The request's messages as the dicts the chat template renders: the one place wire messages
    become template input. With `state`, image/video parts are decoded here into resolved parts
    carrying their MediaInput (api/media_input.py); without it they pass through as dicts."""
    messages = [_with_name(m.model_dump(exclude_unset=True)) for m in req.messages or []]
    if state is not None:
        resolve_media(state, messages, req.mm_processor_kwargs)
    return messages


def media_of(messages: list[dict[str, Any]]) -> list[MediaInput]:
    """The MediaInputs of resolved parts, in prompt order (after middle-out, of the kept messages)."""
    return [p["media"] for m in messages if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and "media" in p]


def _encode(state: ServerState, req: ChatCompletionRequest, tools: list[dict] | None, thinking: bool,
            max_model_len: int) -> tuple[ChatPrompt, list[MediaInput]]:
    messages = template_messages(req, state)
    prefill = ""
    if messages and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls"):
        # A trailing assistant message is the start of the answer, to be continued (spec §2.2).
        prefill = _text_of(messages.pop().get("content"))
        if not messages:
            raise APIError(400, "messages must contain more than a trailing assistant message",
                           "invalid_request", {"param": "messages"})
    try:
        # Control-token strings the client typed ("<turn|>", "<|tool_call>") stay plain text: a
        # user must not forge a system turn or a tool call. The prefill continues the model's own
        # turn, so its markers are real (e.g. "<|channel>thought\n" opens the thought channel).
        def encode(msgs: list[dict]) -> ChatPrompt:
            return state.prompt_encoder.encode(msgs, tools, enable_thinking=thinking, suffix=prefill)

        prompt = encode(messages)
        if len(prompt.ids) < max_model_len or not req.middle_out:
            return prompt, media_of(messages)
        # context-compression: whole messages go from the middle until the prompt fits; when
        # nothing can go, the prompt is returned as is and refused with the context-length 400.
        shorter = middle_out(messages, lambda msgs: len(encode(msgs).ids) < max_model_len)
        if shorter is None:
            return prompt, media_of(messages)
        return encode(shorter), media_of(shorter)
    except ValueError as exc:  # ChatFormatError, or no free placeholder characters left
        raise APIError(400, str(exc), "invalid_prompt", {"param": "messages"}) from None


def _compiler(state: ServerState) -> GrammarCompiler:
    if state.grammar is None:
        # One compiler per tokenizer: it caches the token trie and compiled grammars.
        state.grammar = GrammarCompiler(state.tokenizer)
    return state.grammar


def format_constraint(state: ServerState, fmt: ResponseFormat | None, after_thinking: bool = False,
                      in_thought: bool = False):
    """response_format -> a grammar constraint (None for text or unset); both endpoints use it."""
    if fmt is None or fmt.type == "text":
        return None
    tok = _compiler(state)
    try:
        if fmt.type == "json_object":
            return json_object_constraint(tok, after_thinking, in_thought)
        if fmt.type == "json_schema":
            assert fmt.json_schema is not None
            schema = fmt.json_schema.json_schema if fmt.json_schema.json_schema is not None else {}
            return json_schema_constraint(tok, schema, bool(fmt.json_schema.strict), after_thinking, in_thought)
        if fmt.type == "grammar":
            assert fmt.grammar is not None
            try:
                constraint = grammar_constraint(tok, fmt.grammar, after_thinking, in_thought)
            except SchemaError as exc:
                raise APIError(400, f"Invalid value for 'response_format.grammar': {exc}", "invalid_request",
                               {"param": "response_format.grammar"}) from None
            if not constraint.can_start_without(state.tokenizer.suppress_token_ids):
                raise APIError(400, "Invalid value for 'response_format.grammar': it allows only tokens the model "
                               "never generates (<pad>, <bos>, media markers)", "invalid_request",
                               {"param": "response_format.grammar"})
            return constraint
    except SchemaError as exc:
        raise APIError(400, f"Invalid schema: {exc}", "invalid_request", {"param": "response_format"}) from None
    raise APIError(400, f"response_format type '{fmt.type}' is not supported by this endpoint",
                   "invalid_request", {"param": "response_format"})


def _constraint_for(state: ServerState, req: ChatCompletionRequest, tool_dicts: list[dict] | None,
                    parallel: bool, after_thinking: bool, in_thought: bool):
    choice = req.tool_choice
    fmt = req.response_format
    forced_tool = choice == "required" or isinstance(choice, NamedToolChoice)
    if forced_tool and not tool_dicts:
        raise APIError(400, "tool_choice requires a non-empty 'tools' list", "invalid_request",
                       {"param": "tool_choice"})
    if forced_tool and fmt is not None and fmt.type != "text":
        raise APIError(400, "response_format cannot be combined with a forced tool_choice", "invalid_request",
                       {"param": "response_format"})
    mode: Any = "required"
    if not forced_tool:
        strict = any(t["function"].get("strict") is True for t in tool_dicts or [])
        if choice not in (None, "auto") or not strict or (fmt is not None and fmt.type != "text"):
            return format_constraint(state, fmt, after_thinking, in_thought)
        # tool_choice auto with `strict: true` tools: calls may or may not come, but a call's
        # arguments follow the tool's schema (OpenAI's strict function calling).
        mode = "auto"
    if isinstance(choice, NamedToolChoice):
        name = choice.function["name"]
        if name not in {t["function"]["name"] for t in tool_dicts or []}:
            raise APIError(400, f"tool_choice names '{name}', which is not in 'tools'", "invalid_request",
                           {"param": "tool_choice"})
        mode = {"name": name}
    try:
        return tool_call_constraint(_compiler(state), tool_dicts, mode, parallel, after_thinking, in_thought)
    except SchemaError as exc:
        raise APIError(400, f"Invalid schema: {exc}", "invalid_request", {"param": "tools"}) from None


def _check_sizes(req: ChatCompletionRequest, tool_dicts: list[dict] | None) -> None:
    """Schema size caps before the template renders the tools or a grammar is compiled: both grow
    with the schema (a 100,000-value enum took seconds to render and tokenize, then 37 s to compile)."""
    try:
        if tool_dicts:
            check_schema_size([t["function"].get("parameters") for t in tool_dicts], "the tools' parameter schemas")
        fmt = req.response_format
        if fmt is not None and fmt.json_schema is not None:
            check_schema_size(fmt.json_schema.json_schema, "the JSON schema")
    except SchemaError as exc:
        param = "tools" if "tools" in str(exc) else "response_format"
        raise APIError(400, f"Invalid value for '{param}': {exc}", "invalid_request", {"param": param}) from None


def prepare_chat(state: ServerState, req: ChatCompletionRequest) -> PreparedChat:
    tok = state.tokenizer
    engine = state.engine
    assert engine is not None
    if req.modalities and set(req.modalities) - {"text"}:
        raise APIError(400, f"Invalid value for 'modalities': this model only outputs text, not "
                       f"{', '.join(sorted(set(req.modalities) - {'text'}))}", "invalid_request", {"param": "modalities"})
    tool_dicts = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    _check_sizes(req, tool_dicts)
    parallel = req.parallel_tool_calls is not False
    # tool_choice "none": the model is not told about the tools, and cannot open a call.
    render_tools = None if req.tool_choice == "none" else tool_dicts
    thinking = thinking_enabled(req) if req.messages is not None else False
    if req.messages is not None:
        if not req.middle_out:  # middle-out drops whole messages, which takes tokenizing them
            refuse_unfittable(sum(_chars_of(m.content) for m in req.messages), tok, engine.max_model_len, req)
        prompt, media = _encode(state, req, render_tools, thinking, engine.max_model_len)
        text, prompt_ids, starts_in_reasoning = prompt.text, prompt.ids, prompt.ends_in_reasoning
    else:
        media = []
        text = req.prompt or ""
        if req.middle_out:
            text = trim_for_middle_out(text, tok, engine.max_model_len)
        else:
            refuse_unfittable(len(text), tok, engine.max_model_len, req)
        prompt_ids = tok.encode_prompt(text)
        if req.middle_out and len(prompt_ids) >= engine.max_model_len:
            prompt_ids = middle_out_ids(prompt_ids, engine.max_model_len - 1)  # no messages: cut tokens
            text = tok.decode(prompt_ids)
        starts_in_reasoning = prompt_ends_in_reasoning(text)
    max_tokens = completion_limit(req, len(prompt_ids), engine.max_model_len)
    plan = plan_reasoning(req, max_tokens) if req.messages is not None else ReasoningPlan(False, False, None)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = build_sampling_params(
        req, max_tokens=max_tokens, vocab_size=engine.vocab_size,
        defaults=getattr(tok, "generation_defaults", {}) or {}, logprobs=logprobs,
    )
    # When the prompt leaves the channel open (a prefill such as "<|channel>thought\n") the first
    # output tokens are thinking, to be capped and counted as such.
    if plan.budget is not None:
        params.constraints.append(ThinkingBudget(plan.budget, tok.require_marker("channel_start"),
                                                 tok.require_marker("channel_end"), starts_in_reasoning))
    # A prompt that left the thought channel open starts the grammar after <channel|>, not inside
    # the thought (where the JSON would land in `reasoning`).
    constraint = _constraint_for(state, req, render_tools, parallel, plan.enabled, starts_in_reasoning)
    if constraint is not None:
        params.constraints.append(constraint)
    if req.tool_choice == "none" and tool_dicts:
        params.logit_bias.setdefault(tok.require_marker("tool_call_start"), -100.0)
    return PreparedChat(prompt_ids, params, plan, render_tools, parallel, starts_in_reasoning, text, media)
