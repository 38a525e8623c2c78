"""Issue 17's hostile request classes as raw HTTP requests, shared by the isolation benchmark
(suite/isolation.py) and the soak (probes/soak.py): each is a name, what it sends, and the status
it must get. Bodies are raw bytes so JSON escapes like `\\ud800` reach the server unaltered."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from benchmarks.suite.spawn import ServerProcess, SpawnSpec, start

MODEL = "google/gemma-4-26b-a4b-it"
USER = [{"role": "user", "content": "Hi"}]


@dataclass(frozen=True)
class Hostile:
    name: str
    path: str  # under the server root
    body: bytes
    expect: tuple[int, ...]  # the statuses that count as handled right
    raw: bytes | None = None  # a whole hand-made request instead of a POST of `body`


def nested_schema(levels: int) -> dict:
    """A JSON schema `levels` objects deep."""
    leaf: dict = {"type": "string"}
    for _ in range(levels):
        leaf = {"type": "object", "properties": {"a": leaf}}
    return leaf


def nested_args(levels: int) -> str:
    """Tool-call arguments JSON `levels` objects deep."""
    text = "1"
    for _ in range(levels):
        text = '{"a":' + text + "}"
    return text


def _json(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def classes(body_limit: int = 8 * 1024 * 1024) -> list[Hostile]:
    chat, comp = "/api/v1/chat/completions", "/api/v1/completions"
    big = "hello world " * ((body_limit - 4096) // 12)  # just under the body limit
    enum_tool = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "enum": [f"v{i}" for i in range(100_000)]}}}}}]
    return [
        Hostile("surrogate_content", chat, ('{"model":"%s","messages":[{"role":"user","content":"a\\ud800b"}]}'
                                            % MODEL).encode(), (400,)),
        Hostile("surrogate_model", chat, b'{"model":"x\\ud800","messages":[{"role":"user","content":"x"}]}', (404,)),
        Hostile("deep_tool_params", chat, _json({"model": MODEL, "messages": USER, "tool_choice": "auto", "tools": [
            {"type": "function", "function": {"name": "f", "parameters": nested_schema(98)}}]}), (400,)),
        Hostile("deep_json_schema", chat, _json({"model": MODEL, "messages": USER, "response_format": {
            "type": "json_schema", "json_schema": {"name": "r", "schema": nested_schema(247)}}}), (400,)),
        Hostile("deep_tool_args", chat, _json({"model": MODEL, "messages": USER + [
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "f", "arguments": nested_args(197)}}]},
            {"role": "tool", "tool_call_id": "c", "content": "ok"}]}), (400,)),
        Hostile("big_prompt_completions", comp, _json({"model": MODEL, "prompt": big, "max_tokens": 1}), (400,)),
        Hostile("big_prompt_chat", chat, _json({"model": MODEL, "max_tokens": 1,
                                                "messages": [{"role": "user", "content": big}]}), (400,)),
        Hostile("enum_100k_required", chat, _json({"model": MODEL, "messages": USER, "tools": enum_tool,
                                                   "tool_choice": "required"}), (400,)),
        Hostile("repetition_penalty_1e-300", chat, _json({"model": MODEL, "messages": USER,
                                                          "repetition_penalty": 1e-300}), (400,)),
        Hostile("suppressed_only_grammar", chat, _json({"model": MODEL, "messages": USER, "response_format": {
            "type": "grammar", "grammar": 'start: "<pad>"'}}), (400,)),
        Hostile("models_100k", chat, _json({"models": [f"m{i}" for i in range(100_000)], "messages": USER}), (404,)),
        Hostile("max_tokens_true", chat, _json({"model": MODEL, "messages": USER, "max_tokens": True}), (400,)),
        Hostile("header_line_1mb", "/health", b"", (400,),
                raw=b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"),
    ]


def send(host: str, port: int, h: Hostile, timeout: float = 120.0) -> int:
    """Send one hostile request on its own connection; its status, or -1 for no response (reset)."""
    request = h.raw if h.raw is not None else (
        f"POST {h.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(h.body)}\r\nConnection: close\r\n\r\n").encode() + h.body
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(request)
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    return -1
                data += chunk
            return int(data.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return -1


def trickle(host: str, port: int, what: str, seconds: float) -> int:
    """Trickle a request's headers (`what` = "headers") or body ("body") a byte a second; the
    status the server ends it with (408), or -1 if it never answered within `seconds`."""
    head = f"POST /api/v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    try:
        with socket.create_connection((host, port), timeout=seconds) as s:
            if what == "body":
                s.sendall((head + "Content-Length: 1000\r\n\r\n").encode())
            else:
                s.sendall(head.encode())
            end = time.monotonic() + seconds
            s.settimeout(1.0)
            while time.monotonic() < end:
                try:
                    data = s.recv(65536)
                    return int(data.split(b" ", 2)[1]) if data else -1
                except TimeoutError:
                    s.sendall(b"x")
            return -1
    except (OSError, ValueError, IndexError):
        return -1


@contextmanager
def served(model: str, threads: int, name: str) -> Iterator[ServerProcess]:
    """A ready `gemmaserve serve` of `model` with short slow-client deadlines, stopped at the end."""
    spec = SpawnSpec(kind="gemmaserve", model=model, name=name,
                     extra_args=["--log-level", "error", "--header-timeout", "5", "--body-timeout", "10"])
    with tempfile.TemporaryDirectory() as logs:
        srv = start(spec, ctx_per_slot=0, threads=threads, log_dir=Path(logs))
        try:
            srv.wait_ready()
            yield srv
        finally:
            srv.stop()
