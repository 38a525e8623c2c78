"""Legacy POST /api/v1/completions (+ /v1 alias): raw prompt in, text_completion out (spec §10)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gemmaserve.api.auth import require_auth
from gemmaserve.api.errors import APIError, engine_error_to_api
from gemmaserve.api.guards import admit, respond, run_to_end
from gemmaserve.api.run import (
    TIMEOUT,
    EngineRun,
    new_generation_id,
    normalised_reason,
    record_generation,
)
from gemmaserve.api.chat_prep import format_constraint
from gemmaserve.api.sampling import add_top_a, build_sampling_params, completion_limit, encode_raw_prompt
from gemmaserve.api.sse import DONE, KEEPALIVE, sse_data
from gemmaserve.api.usage import TokenCounts
from gemmaserve.chat.middle_out import middle_out_ids
from gemmaserve.chat.parser import prompt_ends_in_reasoning
from gemmaserve.protocol.completions import CompletionRequest
from gemmaserve.types import EngineError, FinishReason, TokenLogprob

router = APIRouter()


def text_logprobs(items: list[TokenLogprob] | None, offset0: int) -> dict[str, Any] | None:
    """The legacy logprobs object: parallel arrays plus one {token: logprob} map per position."""
    if items is None:
        return None
    offsets, pos = [], offset0
    for lp in items:
        offsets.append(pos)
        pos += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in items],
        "text_offset": offsets,
    }


def echo_logprobs(items: list[TokenLogprob | None], prompt_ids: list[int], prompt_text: str, tok: Any
                  ) -> dict[str, Any]:
    """The prompt's part of an echo's logprobs object, as OpenAI's legacy API gives it: one entry per
    prompt token, the first with null logprob and alternatives (nothing precedes it). Offsets point
    into the echoed text; a token it does not contain (the <bos> the server added) does not advance."""
    tokens = [tok.decode([t], skip_special_tokens=False) for t in prompt_ids]
    offsets, pos = [], 0
    for text in tokens:
        offsets.append(pos)
        if prompt_text.startswith(text, pos):
            pos += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [None if lp is None else lp.logprob for lp in items],
        "top_logprobs": [None if lp is None else {t.token: t.logprob for t in lp.top} for lp in items],
        "text_offset": offsets,
    }


def joined_logprobs(head: dict[str, Any] | None, tail: dict[str, Any] | None) -> dict[str, Any] | None:
    if head is None or tail is None:
        return head or tail
    return {k: head[k] + tail[k] for k in head}


@router.post("/api/v1/completions", dependencies=[Depends(require_auth)])
@router.post("/v1/completions", dependencies=[Depends(require_auth)])
async def completions(req: CompletionRequest, request: Request):
    state, model = admit(request, req)
    engine, tok = state.engine, state.tokenizer
    assert engine is not None
    if isinstance(req.prompt, str):
        prompt_ids = encode_raw_prompt(tok, req.prompt)
        prompt_text = req.prompt
    else:
        prompt_ids = list(req.prompt)  # type: ignore[arg-type]
        if any(t >= engine.vocab_size for t in prompt_ids):
            raise APIError(400, f"Invalid value for 'prompt': token ids must be below {engine.vocab_size}",
                           "invalid_request", {"param": "prompt"})
        prompt_text = tok.decode(prompt_ids)
    if req.middle_out and len(prompt_ids) >= engine.max_model_len:
        # context-compression: a raw prompt has no messages, so tokens go from its middle.
        prompt_ids = middle_out_ids(prompt_ids, engine.max_model_len - 1)
        prompt_text = tok.decode(prompt_ids)
    max_tokens = completion_limit(req, len(prompt_ids), engine.max_model_len)
    params = build_sampling_params(req, max_tokens=max_tokens, vocab_size=engine.vocab_size,
                                   defaults=getattr(tok, "generation_defaults", {}) or {}, logprobs=req.logprobs)
    # A raw prompt has no template to turn thinking on: the answer starts at the first token,
    # unless the prompt itself leaves the thought channel open.
    constraint = format_constraint(state, req.response_format, in_thought=prompt_ends_in_reasoning(prompt_text))
    if constraint is not None:
        params.constraints.append(constraint)
    add_top_a(params, req)
    if req.echo and (req.logprobs is not None or max_tokens == 0):
        params.prompt_logprobs = req.logprobs or 0
    created = int(time.time())
    gen_id = new_generation_id(created)
    run = EngineRun(state, prompt_ids, params, gen_id)
    prefix = prompt_text if req.echo else ""

    def prompt_part(out: Any) -> dict[str, Any] | None:
        """The echoed prompt's logprobs entries (echo with logprobs only)."""
        if not req.echo or req.logprobs is None or out is None or out.prompt_logprobs is None:
            return None
        return echo_logprobs(out.prompt_logprobs, prompt_ids, prompt_text, tok)

    def record(finish, native, streamed, cancelled):
        out = run.last
        counts = TokenCounts(len(prompt_ids), len(out.token_ids) if out else 0, out.num_cached_tokens if out else 0)
        return record_generation(state, gen_id=gen_id, created=created, endpoint="completions", run=run,
                                 counts=counts, finish_reason=finish, native_finish_reason=native,
                                 streamed=streamed, cancelled=cancelled, user=req.user, model=model,
                                 session_id=req.session_id, headers=request.headers)

    def body(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": gen_id, "object": "text_completion", "created": created, "model": model,
                "provider": state.config.provider_name, "system_fingerprint": None, "choices": choices, **extra}

    async def whole() -> JSONResponse:
        # Every started request leaves a /generation record, as on the chat endpoint.
        try:
            await run_to_end(run)
        except EngineError as exc:
            if run.last is not None:
                record("error", "error", False, False)
            raise engine_error_to_api(exc) from None
        except asyncio.CancelledError:  # the client left: the request was aborted
            record(None, None, False, True)
            raise
        last = run.last
        finish = normalised_reason(last, False)
        native = last.finish_reason.value if last and last.finish_reason else None
        usage = record(finish, native, False, False)
        choice = {"text": prefix + (last.text if last else ""), "index": 0,
                  "logprobs": joined_logprobs(prompt_part(last), text_logprobs(last.logprobs if last else None,
                                                                                 len(prefix))),
                  "finish_reason": finish, "native_finish_reason": native}
        if last is not None and last.finish_reason == FinishReason.ERROR:
            choice["error"] = {"code": 500, "message": last.error or "generation failed",
                               "metadata": {"error_type": "server"}}
        return JSONResponse(body([choice], usage=usage), headers={"X-Generation-Id": gen_id})

    async def stream(first: Any) -> AsyncIterator[bytes]:
        out, finish, native, cancelled = first, None, None, True
        offset = len(prefix)
        # With logprobs the echoed prompt waits for its own logprobs, which the first output carries.
        prompt_pending = bool(prefix) and req.logprobs is not None
        try:
            if prefix and not prompt_pending:
                yield sse_data(body([{"text": prefix, "index": 0, "logprobs": None, "finish_reason": None}]))
            try:
                while out is not None:
                    if out is TIMEOUT:
                        yield KEEPALIVE
                    else:
                        if prompt_pending:
                            prompt_pending = False
                            yield sse_data(body([{"text": prefix, "index": 0, "logprobs": prompt_part(out),
                                                  "finish_reason": None}]))
                        if out.new_text or out.new_logprobs:
                            lp = text_logprobs(out.new_logprobs, offset) if req.logprobs is not None else None
                            offset += len(out.new_text)
                            yield sse_data(body([{"text": out.new_text, "index": 0, "logprobs": lp,
                                                  "finish_reason": None}]))
                        if out.finished:
                            break
                    out = await run.next(timeout=state.config.keepalive_interval_s if run.t_first is None else None)
                last = run.last
                if last is not None and last.finish_reason == FinishReason.ERROR:
                    raise EngineError(last.error or "generation failed")
                finish = normalised_reason(last, False) or "stop"
                native = last.finish_reason.value if last and last.finish_reason else "stop"
                yield sse_data(body([{"text": "", "index": 0, "logprobs": None, "finish_reason": finish,
                                      "native_finish_reason": native}]))
            except EngineError as exc:
                finish = native = "error"
                err = engine_error_to_api(exc)
                if type(exc) is EngineError:
                    err = APIError(500, str(exc), "server")
                yield sse_data(body([{"text": "", "index": 0, "finish_reason": "error"}], error=err.body()["error"]))
            usage = record(finish, native, True, False)
            cancelled = False
            yield sse_data(body([], usage=usage))
            yield DONE
        finally:
            await run.close()
            if cancelled:
                record(finish, native, True, True)

    return await respond(request, run, stream=bool(req.stream), whole=whole, frames=stream,
                         keepalive_s=state.config.keepalive_interval_s, gen_id=gen_id)
