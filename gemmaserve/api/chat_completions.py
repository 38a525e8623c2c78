"""POST /api/v1/chat/completions (+ /v1 alias): the chat responder over the generation skeleton
(spec §3, §4): deltas with reasoning and tool calls, the whole message, reasoning token counts."""

from __future__ import annotations

from typing import Any, Iterable

from fastapi import APIRouter, Depends, Request

from gemmaserve.api.admission import admit, require_auth
from gemmaserve.api.chat_output import DeltaStream, chat_logprobs, new_tool_call_id, whole_message
from gemmaserve.api.chat_prep import PreparedChat, prepare_chat
from gemmaserve.api.errors import APIError
from gemmaserve.api.generation import Finish, Generation, Responder, finish_of, respond
from gemmaserve.api.sse import sse_data
from gemmaserve.api.usage import TokenCounts
from gemmaserve.chat.constraints import count_reasoning_tokens
from gemmaserve.protocol.chat import ChatCompletionRequest
from gemmaserve.types import FinishReason, RequestOutput

router = APIRouter()

_DEBUG_PARAMS = ("max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
                 "presence_penalty", "repetition_penalty", "seed", "stop", "ignore_eos", "logprobs")


class ChatResponder(Responder):
    """chat.completion / chat.completion.chunk frames for one prepared chat."""

    def __init__(self, gen: Generation, req: ChatCompletionRequest, prep: PreparedChat) -> None:
        super().__init__(gen)
        self.req, self.prep = req, prep
        self.want_logprobs = prep.params.logprobs is not None
        self.deltas = DeltaStream(tools=prep.tools, exclude_reasoning=prep.reasoning.exclude,
                                  parallel_tool_calls=prep.parallel_tool_calls, new_call_id=new_tool_call_id,
                                  starts_in_reasoning=prep.starts_in_reasoning)
        self.has_tool_calls = False
        self.message: dict[str, Any] | None = None

    def counts(self, last: RequestOutput | None) -> TokenCounts:
        ids = last.token_ids if last is not None else []
        tok = self.gen.state.tokenizer
        reasoning = count_reasoning_tokens(ids, tok.require_marker("channel_start"), tok.require_marker("channel_end"),
                                           self.prep.starts_in_reasoning)
        return TokenCounts(len(self.prep.prompt_ids), len(ids), last.num_cached_tokens if last else 0, reasoning)

    def finish_reasons(self, last: RequestOutput | None) -> Finish:
        return finish_of(last, self.has_tool_calls)

    # -- stream ----------------------------------------------------------------------------------
    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        g = self.gen
        return sse_data({"id": g.gen_id, "provider": g.state.config.provider_name, "model": g.model,
                         "object": "chat.completion.chunk", "created": g.created, "choices": choices, **extra})

    def delta_chunk(self, delta: dict[str, Any], finish: Finish = Finish(None, None), logprobs: Any = None) -> bytes:
        return self.chunk([{"index": 0, "delta": delta, "finish_reason": finish.reason,
                            "native_finish_reason": finish.native, "logprobs": logprobs}])

    def start(self) -> Iterable[bytes]:
        if (self.req.debug or {}).get("echo_upstream_body") is True:
            # Our "upstream" is the engine: show exactly what it was asked to run.
            p, prep = self.prep.params, self.prep
            yield self.chunk([], debug={"echo_upstream_body": {
                "prompt": prep.prompt_text, "prompt_token_ids": prep.prompt_ids,
                "sampling_params": {k: getattr(p, k) for k in _DEBUG_PARAMS},
                "enable_thinking": prep.reasoning.enabled, "thinking_budget": prep.reasoning.budget,
            }})

    def frames(self, out: RequestOutput) -> Iterable[bytes]:
        lp = chat_logprobs(out.new_logprobs) if self.want_logprobs and out.new_logprobs else None
        deltas = self.deltas.feed(out.new_text)
        if out.finished:
            deltas += self.deltas.finish()
        self.has_tool_calls = self.deltas.has_tool_calls
        if lp is not None and not deltas:
            deltas = [{"role": "assistant", "content": ""}]
        for i, delta in enumerate(deltas):
            yield self.delta_chunk(delta, logprobs=lp if i == 0 else None)

    def finish_frames(self, last: RequestOutput | None, finish: Finish) -> Iterable[bytes]:
        yield self.delta_chunk({"role": "assistant", "content": ""}, finish)

    def error_frames(self, err: APIError) -> Iterable[bytes]:
        yield self.chunk([{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                           "native_finish_reason": "error"}], error=err.body()["error"])

    def usage_frames(self, usage: dict[str, Any]) -> Iterable[bytes]:
        yield self.chunk([], usage=usage)

    # -- whole -----------------------------------------------------------------------------------
    def complete(self, last: RequestOutput | None) -> None:
        prep = self.prep
        self.message, self.has_tool_calls = whole_message(
            last.text if last is not None else "", tools=prep.tools, exclude_reasoning=prep.reasoning.exclude,
            parallel_tool_calls=prep.parallel_tool_calls, new_call_id=new_tool_call_id,
            starts_in_reasoning=prep.starts_in_reasoning,
        )

    def body(self, last: RequestOutput | None, finish: Finish, usage: dict[str, Any]) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "logprobs": chat_logprobs(last.logprobs) if last is not None and self.want_logprobs else None,
            "finish_reason": finish.reason,
            "native_finish_reason": finish.native,
            "message": self.message,
        }
        if last is not None and last.finish_reason == FinishReason.ERROR:
            choice["error"] = {"code": 500, "message": last.error or "generation failed",
                               "metadata": {"error_type": "server"}}
        g = self.gen
        return {"id": g.gen_id, "object": "chat.completion", "created": g.created, "model": g.model,
                "provider": g.state.config.provider_name, "system_fingerprint": None, "service_tier": None,
                "choices": [choice], "usage": usage}


class OverChat(Responder):
    """Base of the responders that re-shape chat's output into another wire format (Responses,
    Anthropic Messages): chat's parser, token counts and finish reasons, translated requests."""

    def __init__(self, gen: Generation, req: ChatCompletionRequest, prep: PreparedChat) -> None:
        super().__init__(gen)
        self.chat = ChatResponder(gen, req, prep)

    def counts(self, last: RequestOutput | None) -> TokenCounts:
        return self.chat.counts(last)

    def finish_reasons(self, last: RequestOutput | None) -> Finish:
        return self.chat.finish_reasons(last)

    def chat_deltas(self, out: RequestOutput) -> list[dict[str, Any]]:
        """Chat's `delta` objects for one engine output (tool-call state kept for finish_reasons)."""
        ds = self.chat.deltas
        deltas = ds.feed(out.new_text) + (ds.finish() if out.finished else [])
        self.chat.has_tool_calls = ds.has_tool_calls
        return deltas

    def complete(self, last: RequestOutput | None) -> None:
        self.chat.complete(last)


@router.post("/api/v1/chat/completions", dependencies=[Depends(require_auth)])
@router.post("/v1/chat/completions", dependencies=[Depends(require_auth)], include_in_schema=False)
async def chat_completions(req: ChatCompletionRequest, request: Request):
    adm = admit(request, req)
    # Rendering, tokenizing and grammar compilation are CPU work: keep them off the event loop
    # so other streams keep flowing while a long prompt is prepared.
    prep = await adm.state.preparation.run(prepare_chat, adm.state, req)
    gen = Generation(adm, "completions", prep.prompt_ids, prep.params, user=req.user,
                     session_id=req.session_id or adm.headers.get("x-session-id"), media=prep.media)
    return await respond(request, gen, ChatResponder(gen, req, prep), stream=bool(req.stream))
