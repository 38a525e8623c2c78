"""POST /api/v1/responses (+ /v1 alias): the OpenAI Responses responder over the generation skeleton
(platform spec §2). The request is translated into a chat request (protocol/responses_convert.py);
chat's parser splits the output, and its deltas or whole message are re-shaped into response items."""

from __future__ import annotations

from typing import Any, Iterable

from fastapi import APIRouter, Depends, Request

from gemmaserve.api.admission import admit, require_auth
from gemmaserve.api.chat_completions import OverChat
from gemmaserve.api.chat_output import chat_logprobs
from gemmaserve.api.chat_prep import PreparedChat, prepare_chat
from gemmaserve.api.errors import APIError, translated
from gemmaserve.api.generation import Finish, Generation, respond
from gemmaserve.api.sse import sse_event
from gemmaserve.protocol.chat import ChatCompletionRequest
from gemmaserve.protocol.responses import ResponsesRequest
from gemmaserve.protocol.responses_convert import ResponseEvents, ResponseFrame, to_chat_request, whole_response
from gemmaserve.types import FinishReason, RequestOutput

router = APIRouter()


class ResponsesResponder(OverChat):
    """`response` objects and `response.*` events over chat's parsing of the same output."""

    done = None  # the Responses stream ends with its terminal event, no [DONE]

    def __init__(self, gen: Generation, req: ResponsesRequest, chat: ChatCompletionRequest, prep: PreparedChat):
        super().__init__(gen, chat, prep)
        self.frame = ResponseFrame(req, gen.gen_id, gen.model, gen.created)
        self.events = ResponseEvents(self.frame)
        self.finish: Finish = Finish(None, None)
        self.error: APIError | None = None

    # -- stream ----------------------------------------------------------------------------------
    def _framed(self, events: list[dict[str, Any]]) -> Iterable[bytes]:
        return [sse_event(e) for e in events]

    def start(self) -> Iterable[bytes]:
        return self._framed(self.events.start())

    def frames(self, out: RequestOutput) -> Iterable[bytes]:
        return self._framed([e for d in self.chat_deltas(out) for e in self.events.feed(d)])

    def finish_frames(self, last: RequestOutput | None, finish: Finish) -> Iterable[bytes]:
        self.finish = finish  # the terminal event waits for the usage
        return ()

    def error_frames(self, err: APIError) -> Iterable[bytes]:
        self.finish, self.error = Finish("error", "error"), err
        return ()

    def usage_frames(self, usage: dict[str, Any]) -> Iterable[bytes]:
        error = None if self.error is None else {"code": "server_error", "message": self.error.message}
        return self._framed(self.events.finish(self.finish.reason, usage, error))

    # -- whole -----------------------------------------------------------------------------------
    def body(self, last: RequestOutput | None, finish: Finish, usage: dict[str, Any]) -> dict[str, Any]:
        logprobs = None
        if last is not None and self.chat.want_logprobs:
            logprobs = (chat_logprobs(last.logprobs) or {}).get("content")
        body = whole_response(self.frame, self.chat.message or {}, finish.reason, usage, logprobs)
        if last is not None and last.finish_reason == FinishReason.ERROR:
            body["error"] = {"code": "server_error", "message": last.error or "generation failed"}
        return body


@router.post("/api/v1/responses", dependencies=[Depends(require_auth)])
@router.post("/v1/responses", dependencies=[Depends(require_auth)])
async def responses(req: ResponsesRequest, request: Request):
    chat = translated(to_chat_request, req)
    adm = admit(request, chat)
    prep = await adm.state.preparation.run(prepare_chat, adm.state, chat)
    gen = Generation(adm, "responses", prep.prompt_ids, prep.params, user=req.user,
                     session_id=req.session_id or adm.headers.get("x-session-id"), media=prep.media)
    return await respond(request, gen, ResponsesResponder(gen, req, chat, prep), stream=bool(req.stream))
