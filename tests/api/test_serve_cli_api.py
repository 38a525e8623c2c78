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
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "GEMMASERVE_DATA_DIR": str(tmp_path / "data")},
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


def _serve_in_process(argv: list[str]):
    """`gemmaserve serve ARGV` as run_serve builds it (config, background loader, app), on a free port."""
    from api_support import ServerThread

    from gemmaserve.api.app import create_app
    from gemmaserve.api.cli_serve import server_config_from_args
    from gemmaserve.api.loading import model_loader
    from gemmaserve.api.state import ServerState
    from gemmaserve.cli import build_parser

    args = build_parser().parse_args(["serve", *argv])
    return ServerThread(create_app(ServerState(config=server_config_from_args(args), loader=model_loader(args))))


def _health(base: str) -> httpx.Response:
    deadline = time.monotonic() + 120
    while True:
        r = httpx.get(base + "/health", timeout=5)
        if r.json()["status"] != "loading" or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_serve_dummy_weights_on_a_weightless_dir(tmp_path):
    from gemmaserve.demo import write_demo_model

    d = write_demo_model(tmp_path / "m", "tiny", write_weights=False)  # what make-demo-model writes for 26b-a4b
    common = ["--model", str(d), "--dtype", "float32", "--max-model-len", "256", "--log-level", "warning"]
    with _serve_in_process(common) as srv:
        r = _health(srv.root)
        assert r.status_code == 503 and "no model.safetensors" in r.json()["error"]
        assert "--dummy-weights" in r.json()["error"]
    with _serve_in_process(common + ["--dummy-weights"]) as srv:
        assert _health(srv.root).status_code == 200
        r = httpx.post(srv.url + "/chat/completions", timeout=60, json={
            "model": "google/gemma-4-26b-a4b-it", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3, "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3 and r.json()["choices"][0]["finish_reason"] == "length"
