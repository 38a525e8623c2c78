"""Helpers for the API tests: a scripted fake engine, an in-process uvicorn, server state.

A module of its own (not conftest.py): `from conftest import ...` resolves to whichever test
directory's conftest pytest loaded last."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn

from gemmaserve.api.state import ServerState
from gemmaserve.config import ServerConfig
from gemmaserve.engine.detokenizer import IncrementalDetokenizer
from gemmaserve.engine.client import EngineStats
from gemmaserve.types import FinishReason, RequestOutput, SamplingParams, TokenLogprob, TopLogprob

API_KEY = "sk-test-0123456789"


@dataclass
class Call:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str


@dataclass
class FakeEngine:
    """An EngineClient that emits `script` (text pieces, each encoded with the real tokenizer)
    one piece per step, so tests know every token, byte and field the API must produce.
    `active` plays the KV cache: a request holds "blocks" until it finishes or is aborted."""

    tokenizer: object
    max_model_len: int = 512
    vocab_size: int = 512
    script: list[str] = field(default_factory=lambda: ["Hello", " world", "!"])
    first_delay: float = 0.0
    step_delay: float = 0.0
    submit_error: Exception | None = None
    fail_after: int | None = None  # finish with FinishReason.ERROR after this many pieces
    cached_tokens: int = 0
    ready: bool = True
    calls: list[Call] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    aborted: list[str] = field(default_factory=list)

    @property
    def is_ready(self) -> bool:
        return self.ready

    def stats(self) -> EngineStats:
        return EngineStats(num_running=len(self.active), num_waiting=0, kv_usage=len(self.active) / 8,
                           num_preemptions=0, prefix_cache_hit_rate=0.0)

    async def abort(self, request_id: str) -> None:
        if request_id in self.active:
            self.active.discard(request_id)
            self.aborted.append(request_id)

    async def shutdown(self) -> None:
        self.ready = False

    def _logprobs(self, ids: list[int], k: int) -> list[TokenLogprob]:
        # Token text and raw bytes as the real engine fills them (from the detokenizer).
        detok = IncrementalDetokenizer(self.tokenizer, SamplingParams())
        text, raw = detok.token_text, detok.token_bytes
        out = []
        for i in ids:
            top = [TopLogprob(i, text(i), -0.5, raw(i))] + [TopLogprob(j, text(j), -1.0 - j / 1000, raw(j))
                                                            for j in range(3, 3 + max(0, k - 1))]
            out.append(TokenLogprob(i, text(i), -0.5, top[:k], raw(i)))
        return out

    async def generate(self, prompt_token_ids, params: SamplingParams, request_id: str):
        self.calls.append(Call(list(prompt_token_ids), params, request_id))
        if self.submit_error is not None:
            raise self.submit_error
        self.active.add(request_id)
        done = False
        try:
            await asyncio.sleep(self.first_delay)
            token_ids: list[int] = []
            text = ""
            lps: list[TokenLogprob] = []
            pieces = list(self.script)
            for n, piece in enumerate(pieces):
                ids = self.tokenizer.encode(piece)
                reason, error = None, None
                if params.max_tokens is not None and len(token_ids) + len(ids) >= params.max_tokens:
                    ids = ids[: params.max_tokens - len(token_ids)]
                    piece = self.tokenizer.decode(ids)
                    reason = FinishReason.LENGTH
                elif self.fail_after is not None and n + 1 >= self.fail_after:
                    reason, error = FinishReason.ERROR, "scripted failure"
                elif n == len(pieces) - 1:
                    reason = FinishReason.STOP
                token_ids += ids
                text += piece
                new_lps = self._logprobs(ids, params.logprobs) if params.logprobs is not None else None
                if new_lps is not None:
                    lps += new_lps
                yield RequestOutput(
                    request_id=request_id, prompt_token_ids=list(prompt_token_ids), new_token_ids=ids,
                    new_text=piece, token_ids=list(token_ids), text=text,
                    logprobs=list(lps) if new_lps is not None else None, new_logprobs=new_lps,
                    finished=reason is not None, finish_reason=reason, num_cached_tokens=self.cached_tokens,
                    error=error,
                )
                if reason is not None:
                    done = True
                    return
                await asyncio.sleep(self.step_delay)
        finally:
            # Closing the iterator early is an abort, as the EngineClient contract says.
            if not done and request_id in self.active:
                self.aborted.append(request_id)
            self.active.discard(request_id)


class ServerThread:
    """uvicorn on a free port in a daemon thread; `url` is the OpenAI base_url."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        state = getattr(app.state, "gs", None)
        if state is not None:  # the API app: served the way `gemmaserve serve` serves it
            from gemmaserve.api.http_server import uvicorn_config

            config = uvicorn_config(app, state.config, log_level="warning", lifespan="on")
        else:
            config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/api/v1"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def make_state(tokenizer, engine, **config) -> ServerState:
    from gemmaserve.chat.render import ChatRenderer

    cfg = ServerConfig(**config)
    return ServerState(config=cfg, engine=engine, tokenizer=tokenizer, renderer=ChatRenderer(tokenizer.chat_template))


@contextmanager
def real_engine_server(demo_dir, **config):
    """uvicorn over the real AsyncEngine on the tiny demo model (float32, 512-token context),
    with srv.engine and srv.state set; the engine is shut down afterwards."""
    from gemmaserve.api.app import create_app
    from gemmaserve.config import EngineConfig
    from gemmaserve.engine.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(EngineConfig(model=str(demo_dir), dtype="float32", max_model_len=512))
    try:
        state = make_state(engine.tokenizer, engine, **config)
        with ServerThread(create_app(state)) as srv:
            srv.engine, srv.state = engine, state
            yield srv
    finally:
        asyncio.run(engine.shutdown())
