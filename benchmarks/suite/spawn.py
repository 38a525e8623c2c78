"""Starts and stops benchmark servers (gemmaserve serve, llama.cpp's llama-server) on loopback ports."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "gemmaserve-bench"))
DEFAULT_LLAMA_SERVER = DEFAULT_CACHE / "build-llama.cpp" / "bin" / "llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SpawnSpec:
    """One server to start: `gemmaserve:MODEL_DIR` or `llama:GGUF[:NP]` (NP = parallel slots)."""

    kind: str  # "gemmaserve" | "llama"
    model: str
    parallel: int = 1
    extra_args: list[str] = field(default_factory=list)
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> "SpawnSpec":
        # An optional "NAME=" prefix names the endpoint; otherwise the kind does.
        name = ""
        if "=" in text.split(":", 1)[0]:
            name, text = text.split("=", 1)
        kind, _, rest = text.partition(":")
        if kind not in ("gemmaserve", "llama") or not rest:
            raise ValueError(f"--spawn wants gemmaserve:MODEL or llama:GGUF[:NP], got {text!r}")
        parallel = 1
        if kind == "llama":
            head, sep, tail = rest.rpartition(":")
            if sep and tail.isdigit():
                rest, parallel = head, int(tail)
        return cls(kind=kind, model=rest, parallel=parallel, name=name or kind)


class ServerProcess:
    """A child server process in its own process group (so its workers die with it), with its
    output in a log file that is printed on a failed start."""

    def __init__(self, argv: list[str], port: int, log_path: Path, env: dict[str, str] | None = None):
        self.argv = argv
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Poll /health until 200; llama-server answers 503 while loading, gemmaserve too."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: {shlex.join(self.argv)}\n{self.tail()}"
                )
            try:
                r = httpx.get(self.base_url + "/health", timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout:.0f}s: {shlex.join(self.argv)}\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        self._log.flush()
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def gemmaserve_argv(spec: SpawnSpec, port: int, python: str = sys.executable) -> list[str]:
    return [
        python, "-m", "gemmaserve.cli", "serve", "--model", spec.model,
        "--host", "127.0.0.1", "--port", str(port), *spec.extra_args,
    ]  # fmt: skip


def llama_argv(
    spec: SpawnSpec, port: int, ctx_per_slot: int, threads: int, server: Path = DEFAULT_LLAMA_SERVER
) -> list[str]:
    # llama-server splits -c over its -np slots: give every slot room for prompt + output, in
    # whole 256-token units (it pads and rounds the context, never below what we ask per slot).
    ctx_per_slot = -(-ctx_per_slot // 256) * 256
    return [
        str(server), "-m", spec.model, "--host", "127.0.0.1", "--port", str(port),
        "-np", str(spec.parallel), "-c", str(ctx_per_slot * spec.parallel),
        "-t", str(threads), "-tb", str(threads), "--no-webui", *spec.extra_args,
    ]  # fmt: skip


def start(
    spec: SpawnSpec, ctx_per_slot: int, threads: int, log_dir: Path, llama_server: Path = DEFAULT_LLAMA_SERVER
) -> ServerProcess:
    port = free_port()
    env = dict(os.environ)
    # Both engines get the same thread count, so the comparison is per-core fair.
    env.setdefault("OMP_NUM_THREADS", str(threads))
    if spec.kind == "gemmaserve":
        argv = gemmaserve_argv(spec, port)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    else:
        if not llama_server.exists():
            raise FileNotFoundError(f"{llama_server} missing: run benchmarks/suite/setup_llamacpp.sh build")
        argv = llama_argv(spec, port, ctx_per_slot, threads, llama_server)
    return ServerProcess(argv, port, log_dir / f"{spec.name}-{port}.log", env=env)
