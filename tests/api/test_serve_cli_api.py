"""`serve` as a process: the port answers 503 while the model loads, then serves; open-API warning."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

RUNNER = (
    "import argparse, sys\n"
    "from gemmaserve.api.cli_serve import add_serve_parser\n"
    "p = argparse.ArgumentParser(); add_serve_parser(p.add_subparsers(dest='command'))\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_process_loads_and_answers(demo_dir, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "serve", "--model", str(demo_dir), "--port", str(port), "--dtype", "float32",
         "--max-model-len", "256", "--served-model-name", "demo", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        statuses = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.get(base + "/health", timeout=5)
                statuses.add(r.status_code)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        assert 200 in statuses
        r = httpx.post(base + "/api/v1/chat/completions", timeout=60, json={
            "model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert r.json()["model"] == "demo"
        assert httpx.get(base + "/api/v1/models").json()["data"][0]["context_length"] == 256
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    out = (tmp_path / "serve.log").read_text()
    assert "the API is open to anyone" in out


def test_serve_reports_a_bad_keys_file(tmp_path, capsys):
    from gemmaserve.api.cli_serve import add_serve_parser

    keys = tmp_path / "keys"
    keys.write_text("nope\n")
    p = argparse.ArgumentParser()
    add_serve_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["serve", "--model", "/nonexistent", "--api-keys-file", str(keys)])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert f"{keys}:1: expected a sha256 hex digest" in err
