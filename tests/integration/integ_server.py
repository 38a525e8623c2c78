"""Helpers for the integration tests: `gemmaserve serve` as a real subprocess, and a JSON-schema
check for the subset of keywords the tests' schemas use (jsonschema is not a dependency)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import torch

# On the shared 2-core box torch's intra-op threads spin against other processes: a tiny-model
# step takes ~0.25 s with 2 threads and ~4 ms with 1. Tests and their subprocesses use one.
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

MODEL = "google/gemma-4-26b-a4b-it"
API_KEY = "sk-integration-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.api = self.base + "/api/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(model_dir: Path, log_dir: Path, *extra: str, timeout: float = 180.0,
          cmd_prefix: list[str] | None = None) -> Iterator[Server]:
    """Runs `python -m gemmaserve.cli serve --model DIR --port P *extra` the way a user does and
    waits for /health == 200 (`cmd_prefix` replaces `python -m gemmaserve.cli`, e.g. the console
    script). SIGINT at the end is uvicorn's graceful shutdown (Ctrl-C)."""
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    prefix = cmd_prefix or [sys.executable, "-m", "gemmaserve.cli"]
    cmd = [*prefix, "serve", "--model", str(model_dir), "--port", str(port), *extra]
    # Each server keeps its store in the test's folder, never in the user's data directory.
    env = {**SUBPROCESS_ENV, "GEMMASERVE_DATA_DIR": str(log_dir / f"data-{port}")}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{srv.log_text()}"
            assert time.monotonic() < deadline, f"serve not healthy in {timeout}s:\n{srv.log_text()}"
            try:
                if httpx.get(srv.base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a test module (an autouse module fixture enters it), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def metric(text: str, name: str) -> float:
    """One unlabelled sample from a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


_TYPES = {"object": dict, "string": str, "boolean": bool, "array": list, "null": type(None)}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Violations of `schema` by `value` for type, enum, required, properties,
    additionalProperties, items, minLength/maxLength, minimum/maximum."""
    errs: list[str] = []
    typ = schema.get("type")
    if typ == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif typ is not None:
        ok = isinstance(value, _TYPES[typ]) and not (typ != "boolean" and isinstance(value, bool))
    else:
        ok = True
    if not ok:
        return [f"{path}: {value!r} is not {typ}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errs.append(f"{path}: length {len(value)} out of range")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errs.append(f"{path}: {value} out of range")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errs += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                errs += schema_errors(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties", True) is False:
                errs.append(f"{path}: unexpected {k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errs += schema_errors(v, schema["items"], f"{path}[{i}]")
    return errs
