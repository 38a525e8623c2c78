"""Legacy POST /api/v1/completions (+ /v1 alias): raw prompt in, text_completion out (spec §10):
prompt preparation and the text_completion responder over the generation skeleton."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from fastapi import APIRouter, Depends, Request

from gemmaserve.api.admission import admit, require_auth
from gemmaserve.api.chat_prep import format_constraint
from gemmaserve.api.errors import APIError
from gemmaserve.api.generation import Finish, Generation, Responder, respond
from gemmaserve.api.sampling import build_sampling_params, completion_limit, refuse_unfittable, trim_for_middle_out
from gemmaserve.api.sse import sse_data
from gemmaserve.api.state import ServerState
from gemmaserve.chat.middle_out import middle_out_ids
from gemmaserve.chat.parser import prompt_ends_in_reasoning
from gemmaserve.protocol.completions import CompletionRequest
from gemmaserve.types import FinishReason, RequestOutput, SamplingParams, TokenLogprob

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


@dataclass
class PreparedCompletion:
    prompt_ids: list[int]
    prompt_text: str  # what the ids decode to (echoed, and the base of echo logprob offsets)
    params: SamplingParams


def prepare_completion(state: ServerState, req: CompletionRequest) -> PreparedCompletion:
    """A validated completions request -> prompt ids and SamplingParams (CPU work: run off the loop)."""
    engine, tok = state.engine, state.tokenizer
    assert engine is not None
    if isinstance(req.prompt, str):
        prompt_text = req.prompt
        if req.middle_out:
            prompt_text = trim_for_middle_out(prompt_text, tok, engine.max_model_len)
        else:
            refuse_unfittable(len(prompt_text), tok, engine.max_model_len, req)
        prompt_ids = tok.encode_prompt(prompt_text)
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
    if req.echo and (req.logprobs is not None or max_tokens == 0):
        params.prompt_logprobs = req.logprobs or 0
    return PreparedCompletion(prompt_ids, prompt_text, params)


class CompletionResponder(Responder):
    """text_completion objects: the echoed prompt (with its logprobs) first, then text deltas."""

    def __init__(self, gen: Generation, req: CompletionRequest, prep: PreparedCompletion) -> None:
        super().__init__(gen)
        self.req, self.prep = req, prep
        self.prefix = prep.prompt_text if req.echo else ""
        self.offset = len(self.prefix)
        # With logprobs the echoed prompt waits for its own logprobs, which the first output carries.
        self.prompt_pending = bool(self.prefix) and req.logprobs is not None

    def _body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        g = self.gen
        return {"id": g.gen_id, "object": "text_completion", "created": g.created, "model": g.model,
                "provider": g.state.config.provider_name, "system_fingerprint": None, "choices": choices, **extra}

    def _prompt_part(self, out: RequestOutput | None) -> dict[str, Any] | None:
        """The echoed prompt's logprobs entries (echo with logprobs only)."""
        if not self.req.echo or self.req.logprobs is None or out is None or out.prompt_logprobs is None:
            return None
        return echo_logprobs(out.prompt_logprobs, self.prep.prompt_ids, self.prep.prompt_text, self.gen.state.tokenizer)

    # -- stream ----------------------------------------------------------------------------------
    def start(self) -> Iterable[bytes]:
        if self.prefix and not self.prompt_pending:
            yield sse_data(self._body([{"text": self.prefix, "index": 0, "logprobs": None, "finish_reason": None}]))

    def frames(self, out: RequestOutput) -> Iterable[bytes]:
        if self.prompt_pending:
            self.prompt_pending = False
            yield sse_data(self._body([{"text": self.prefix, "index": 0, "logprobs": self._prompt_part(out),
                                        "finish_reason": None}]))
        if out.new_text or out.new_logprobs:
            lp = text_logprobs(out.new_logprobs, self.offset) if self.req.logprobs is not None else None
            self.offset += len(out.new_text)
            yield sse_data(self._body([{"text": out.new_text, "index": 0, "logprobs": lp, "finish_reason": None}]))

    def finish_frames(self, last: RequestOutput | None, finish: Finish) -> Iterable[bytes]:
        yield sse_data(self._body([{"text": "", "index": 0, "logprobs": None, "finish_reason": finish.reason,
                                    "native_finish_reason": finish.native}]))

    def error_frames(self, err: APIError) -> Iterable[bytes]:
        yield sse_data(self._body([{"text": "", "index": 0, "finish_reason": "error"}], error=err.body()["error"]))

    def usage_frames(self, usage: dict[str, Any]) -> Iterable[bytes]:
        yield sse_data(self._body([], usage=usage))

    # -- whole -----------------------------------------------------------------------------------
    def body(self, last: RequestOutput | None, finish: Finish, usage: dict[str, Any]) -> dict[str, Any]:
        choice = {"text": self.prefix + (last.text if last else ""), "index": 0,
                  "logprobs": joined_logprobs(self._prompt_part(last),
                                              text_logprobs(last.logprobs if last else None, len(self.prefix))),
                  "finish_reason": finish.reason, "native_finish_reason": finish.native}
        if last is not None and last.finish_reason == FinishReason.ERROR:
            choice["error"] = {"code": 500, "message": last.error or "generation failed",
                               "metadata": {"error_type": "server"}}
        return self._body([choice], usage=usage)


@router.post("/api/v1/completions", dependencies=[Depends(require_auth)])
@router.post("/v1/completions", dependencies=[Depends(require_auth)], include_in_schema=False)
async def completions(req: CompletionRequest, request: Request):
    adm = admit(request, req)
    # Tokenizing a long prompt is CPU work: off the event loop, as for chat.
    prep = await adm.state.preparation.run(prepare_completion, adm.state, req)
    gen = Generation(adm, "completions", prep.prompt_ids, prep.params, user=req.user, session_id=req.session_id)
    return await respond(request, gen, CompletionResponder(gen, req, prep), stream=bool(req.stream))
