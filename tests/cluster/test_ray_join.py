"""`gemmaserve cluster serve --address ...` joins a running Ray cluster (as on machines started
with `ray start`), serves through it, and on Ctrl-C removes only its own application."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def test_cli_joins_existing_cluster(demo_dir, tmp_path):
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}})
    proc = None
    try:
        address = ray.get_runtime_context().gcs_address
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(tmp_path / "cli.log", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gemmaserve.cli", "cluster", "serve", "--address", address, "--model", str(demo_dir),
             "--dtype", "float32", "--replicas", "1", "--port", str(port), "--max-model-len", "256",
             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "cli.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the joined cluster never answered"
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/api/v1/chat/completions", timeout=30,
                               json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert r.json()["provider"] == "gemmaserve/replica-0" and r.json()["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert "gemmaserve" not in serve.status().applications  # its app is gone, the cluster stays
        assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
