"""POST /api/v1/messages, /v1/messages and .../count_tokens: the Anthropic Messages responder over the
generation skeleton (platform spec §3), with Anthropic's error envelope on these paths. The request
becomes a chat request (protocol/messages_convert.py); chat's parser splits the output into blocks."""

from __future__ import annotations

from typing import Any, Iterable

from fastapi import APIRouter, Depends, FastAPI, Request

from gemmaserve.api.admission import Admission, admit, require_auth
from gemmaserve.api.chat_completions import OverChat
from gemmaserve.api.chat_prep import PreparedChat, prepare_chat
from gemmaserve.api.errors import APIError, register_error_envelope, translated
from gemmaserve.api.generation import Finish, Generation, respond
from gemmaserve.api.sse import sse_event
from gemmaserve.protocol.chat import ChatCompletionRequest
from gemmaserve.protocol.messages import CountTokensRequest, MessagesBody, MessagesRequest
from gemmaserve.protocol.messages_convert import MessageEvents, error_body, to_chat_request, whole_message
from gemmaserve.types import RequestOutput

router = APIRouter()

PATHS = ("/api/v1/messages", "/v1/messages")


def register(app: FastAPI) -> None:
    """The routes, and Anthropic's envelope for every error under them (validation, auth, admission)."""
    app.include_router(router)
    for prefix in PATHS:
        register_error_envelope(app, prefix, lambda err: error_body(err.status, err.message))


class MessagesResponder(OverChat):
    """Anthropic `message` objects and `event:`-typed stream events over chat's parsing."""

    done = None
    keepalive = sse_event({"type": "ping"})  # Anthropic's own heartbeat while the prompt is computed

    def __init__(self, gen: Generation, chat: ChatCompletionRequest, prep: PreparedChat):
        super().__init__(gen, chat, prep)
        self.stops = set(chat.stop_list())
        self.events = MessageEvents(gen.gen_id, gen.model, len(prep.prompt_ids))
        self.finish: Finish = Finish(None, None)
        self.stop_sequence: str | None = None

    def _matched_stop(self, last: RequestOutput | None) -> str | None:
        reason = last.stop_reason if last is not None else None
        return reason if isinstance(reason, str) and reason in self.stops else None

    # -- stream ----------------------------------------------------------------------------------
    def start(self) -> Iterable[bytes]:
        return [sse_event(e) for e in self.events.start()]

    def frames(self, out: RequestOutput) -> Iterable[bytes]:
        return [sse_event(e) for d in self.chat_deltas(out) for e in self.events.feed(d)]

    def finish_frames(self, last: RequestOutput | None, finish: Finish) -> Iterable[bytes]:
        self.finish, self.stop_sequence = finish, self._matched_stop(last)  # message_delta waits for usage
        return ()

    def error_frames(self, err: APIError) -> Iterable[bytes]:
        self.finish = Finish("error", "error")
        return [sse_event(e) for e in self.events.error(err.status, err.message)]

    def usage_frames(self, usage: dict[str, Any]) -> Iterable[bytes]:
        if self.finish.reason == "error":
            return ()  # the error event ended the stream
        return [sse_event(e) for e in self.events.finish(self.finish.reason, self.stop_sequence, usage)]

    # -- whole -----------------------------------------------------------------------------------
    def body(self, last: RequestOutput | None, finish: Finish, usage: dict[str, Any]) -> dict[str, Any]:
        if finish.reason == "error":
            raise APIError(500, (last.error if last is not None else None) or "generation failed", "server")
        return whole_message(self.gen.gen_id, self.gen.model, self.chat.message or {}, finish.reason,
                             self._matched_stop(last), usage)


async def _prepared(req: MessagesBody, request: Request) -> tuple[Admission, ChatCompletionRequest, PreparedChat]:
    chat = translated(to_chat_request, req)
    adm = admit(request, chat)
    return adm, chat, await adm.state.preparation.run(prepare_chat, adm.state, chat)


@router.post("/api/v1/messages", dependencies=[Depends(require_auth)])
@router.post("/v1/messages", dependencies=[Depends(require_auth)])
async def messages(req: MessagesRequest, request: Request):
    adm, chat, prep = await _prepared(req, request)
    gen = Generation(adm, "messages", prep.prompt_ids, prep.params, user=chat.user,
                     session_id=req.session_id or adm.headers.get("x-session-id"), media=prep.media)
    return await respond(request, gen, MessagesResponder(gen, chat, prep), stream=req.stream)


@router.post("/api/v1/messages/count_tokens", dependencies=[Depends(require_auth)])
@router.post("/v1/messages/count_tokens", dependencies=[Depends(require_auth)])
async def count_tokens(req: CountTokensRequest, request: Request):
    """The prompt's token count exactly as /messages would render it (tools and thinking included)."""
    _, _, prep = await _prepared(req, request)
    return {"input_tokens": len(prep.prompt_ids)}
