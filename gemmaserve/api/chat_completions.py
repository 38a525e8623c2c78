"""POST /api/v1/chat/completions (+ /v1 alias): whole responses and SSE streams (spec §3, §4)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gemmaserve.api.auth import require_auth
from gemmaserve.api.chat_output import DeltaStream, chat_logprobs, whole_message
from gemmaserve.api.chat_prep import PreparedChat, prepare_chat
from gemmaserve.api.errors import APIError, engine_error_to_api
from gemmaserve.api.guards import admit, respond, run_to_end
from gemmaserve.api.run import (
    TIMEOUT,
    EngineRun,
    new_generation_id,
    new_tool_call_id,
    normalised_reason,
    record_generation,
)
from gemmaserve.api.sampling import CHANNEL_END, CHANNEL_START, marker_id
from gemmaserve.api.sse import DONE, KEEPALIVE, sse_data
from gemmaserve.api.state import ServerState
from gemmaserve.api.usage import TokenCounts
from gemmaserve.chat.constraints import count_reasoning_tokens
from gemmaserve.protocol.chat import ChatCompletionRequest
from gemmaserve.types import EngineError, FinishReason, RequestOutput

router = APIRouter()


class _Ctx:
    """What every frame of one response repeats."""

    def __init__(self, state: ServerState, req: ChatCompletionRequest, prep: PreparedChat, request: Request,
                 model: str):
        self.state = state
        self.req = req
        self.prep = prep
        self.headers = request.headers
        self.created = int(time.time())
        self.gen_id = new_generation_id(self.created)
        self.model = model
        self.provider = state.config.provider_name

    def counts(self, run: EngineRun) -> TokenCounts:
        out = run.last
        ids = out.token_ids if out is not None else []
        tok = self.state.tokenizer
        reasoning = count_reasoning_tokens(ids, marker_id(tok, CHANNEL_START), marker_id(tok, CHANNEL_END),
                                           self.prep.starts_in_reasoning)
        return TokenCounts(len(self.prep.prompt_ids), len(ids), out.num_cached_tokens if out else 0, reasoning)

    def record(self, run: EngineRun, finish: str | None, native: str | None, *, streamed: bool, cancelled: bool):
        return record_generation(
            self.state, gen_id=self.gen_id, created=self.created, endpoint="completions", run=run,
            counts=self.counts(run), finish_reason=finish, native_finish_reason=native, streamed=streamed,
            cancelled=cancelled, user=self.req.user, model=self.model, session_id=self.req.session_id or self.headers.get("x-session-id"),
            headers=self.headers,
        )

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_data({"id": self.gen_id, "provider": self.provider, "model": self.model,
                         "object": "chat.completion.chunk", "created": self.created, "choices": choices, **extra})

    def delta_chunk(self, delta: dict[str, Any], finish: str | None = None, native: str | None = None,
                    logprobs: Any = None) -> bytes:
        return self.chunk([{"index": 0, "delta": delta, "finish_reason": finish,
                            "native_finish_reason": native, "logprobs": logprobs}])


def _native(out: RequestOutput | None, has_tool_calls: bool) -> str | None:
    if out is None or out.finish_reason is None:
        return None
    if out.finish_reason == FinishReason.STOP and has_tool_calls:
        return "tool_calls"
    return out.finish_reason.value


@router.post("/api/v1/chat/completions", dependencies=[Depends(require_auth)])
@router.post("/v1/chat/completions", dependencies=[Depends(require_auth)])
async def chat_completions(req: ChatCompletionRequest, request: Request):
    state, model = admit(request, req)
    # Rendering, tokenizing and grammar compilation are CPU work: keep them off the event loop
    # so other streams keep flowing while a long prompt is prepared.
    prep = await asyncio.to_thread(prepare_chat, state, req)
    ctx = _Ctx(state, req, prep, request, model)
    run = EngineRun(state, prep.prompt_ids, prep.params, ctx.gen_id)
    return await respond(request, run, stream=bool(req.stream), whole=lambda: _whole(ctx, run),
                         frames=lambda first: _stream(ctx, run, first),
                         keepalive_s=state.config.keepalive_interval_s, gen_id=ctx.gen_id)


async def _whole(ctx: _Ctx, run: EngineRun) -> JSONResponse:
    try:
        await run_to_end(run)
    except EngineError as exc:
        if run.last is not None:  # it had started: keep its record
            ctx.record(run, "error", "error", streamed=False, cancelled=False)
        raise engine_error_to_api(exc) from None
    except asyncio.CancelledError:
        ctx.record(run, None, None, streamed=False, cancelled=True)
        raise
    last = run.last
    text = last.text if last is not None else ""
    message, has_calls = whole_message(
        text, tools=ctx.prep.tools, exclude_reasoning=ctx.prep.reasoning.exclude,
        parallel_tool_calls=ctx.prep.parallel_tool_calls, new_call_id=new_tool_call_id,
        starts_in_reasoning=ctx.prep.starts_in_reasoning,
    )
    finish = normalised_reason(last, has_calls)
    native = _native(last, has_calls)
    usage = ctx.record(run, finish, native, streamed=False, cancelled=False)
    choice: dict[str, Any] = {
        "index": 0,
        "logprobs": chat_logprobs(last.logprobs) if last is not None and ctx.prep.params.logprobs is not None else None,
        "finish_reason": finish,
        "native_finish_reason": native,
        "message": message,
    }
    if last is not None and last.finish_reason == FinishReason.ERROR:
        choice["error"] = {"code": 500, "message": last.error or "generation failed",
                           "metadata": {"error_type": "server"}}
    body = {
        "id": ctx.gen_id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
        "provider": ctx.provider, "system_fingerprint": None, "service_tier": None,
        "choices": [choice], "usage": usage,
    }
    return JSONResponse(body, headers={"X-Generation-Id": ctx.gen_id})


async def _stream(ctx: _Ctx, run: EngineRun, out: Any) -> AsyncIterator[bytes]:
    interval = ctx.state.config.keepalive_interval_s
    ds = DeltaStream(tools=ctx.prep.tools, exclude_reasoning=ctx.prep.reasoning.exclude,
                     parallel_tool_calls=ctx.prep.parallel_tool_calls, new_call_id=new_tool_call_id,
                     starts_in_reasoning=ctx.prep.starts_in_reasoning)
    want_logprobs = ctx.prep.params.logprobs is not None
    finish = native = None
    cancelled = True  # stays True unless the stream reaches its end (client disconnect)
    try:
        debug = ctx.req.debug or {}
        if debug.get("echo_upstream_body") is True:
            # Our "upstream" is the engine: show exactly what it was asked to run.
            p = ctx.prep.params
            yield ctx.chunk([], debug={"echo_upstream_body": {
                "prompt": ctx.prep.prompt_text, "prompt_token_ids": ctx.prep.prompt_ids,
                "sampling_params": {k: getattr(p, k) for k in (
                    "max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
                    "presence_penalty", "repetition_penalty", "seed", "stop", "ignore_eos", "logprobs")},
                "enable_thinking": ctx.prep.reasoning.enabled, "thinking_budget": ctx.prep.reasoning.budget,
            }})
        try:
            while out is not None:
                if out is TIMEOUT:
                    yield KEEPALIVE
                else:
                    lp = chat_logprobs(out.new_logprobs) if want_logprobs and out.new_logprobs else None
                    deltas = ds.feed(out.new_text)
                    if out.finished:
                        deltas += ds.finish()
                    if lp is not None and not deltas:
                        deltas = [{"role": "assistant", "content": ""}]
                    for i, delta in enumerate(deltas):
                        yield ctx.delta_chunk(delta, logprobs=lp if i == 0 else None)
                    if out.finished:
                        break
                out = await run.next(timeout=interval if run.t_first is None else None)
            last = run.last
            if last is not None and last.finish_reason == FinishReason.ERROR:
                raise _InBandError(last.error or "generation failed")
            finish = normalised_reason(last, ds.has_tool_calls) or "stop"
            native = _native(last, ds.has_tool_calls) or "stop"
            yield ctx.delta_chunk({"role": "assistant", "content": ""}, finish, native)
        except (EngineError, _InBandError) as exc:
            finish = native = "error"
            err = engine_error_to_api(exc) if isinstance(exc, EngineError) else APIError(500, str(exc), "server")
            yield ctx.chunk([{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                              "native_finish_reason": "error"}], error=err.body()["error"])
        usage = ctx.record(run, finish, native, streamed=True, cancelled=False)
        cancelled = False
        yield ctx.chunk([], usage=usage)
        yield DONE
    finally:
        await run.close()
        if cancelled:
            ctx.record(run, finish, native, streamed=True, cancelled=True)


class _InBandError(Exception):
    """A request the engine finished with FinishReason.ERROR, reported as an error chunk."""
