"""`gemmaserve serve --database-url postgresql+psycopg://...` end to end on a real PostgreSQL server:
the first management key from the CLI, a key made through the API, a billed request, and all of
it still there after the server restarts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from integ_server import MODEL, SUBPROCESS_ENV, serve  # noqa: E402


def test_serve_keeps_keys_and_usage_in_postgres(postgres, demo_dir, tmp_path):
    url = postgres.url()
    mgmt = subprocess.run([sys.executable, "-m", "gemmaserve.cli", "keys", "create", "--management",
                           "--database-url", url], capture_output=True, text=True, env=SUBPROCESS_ENV,
                          timeout=120, check=True).stdout.strip()
    args = ("--database-url", url, "--dtype", "float32", "--max-model-len", "256", "--log-level", "warning")
    with serve(demo_dir, tmp_path, *args) as srv:
        created = httpx.post(f"{srv.api}/keys", json={"name": "pg", "limit": 1, "limit_reset": "monthly"},
                             headers={"Authorization": f"Bearer {mgmt}"}).json()
        key = created["key"]
        r = httpx.post(f"{srv.api}/chat/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                       json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200
        gen_id, cost = r.json()["id"], r.json()["usage"]["cost"]
    with serve(demo_dir, tmp_path, *args) as srv:
        h = {"Authorization": f"Bearer {key}"}
        info = httpx.get(f"{srv.api}/key", headers=h).json()["data"]
        assert info["usage"] == cost > 0 and info["usage_monthly"] == cost and info["limit"] == 1
        rec = httpx.get(f"{srv.api}/generation", params={"id": gen_id}, headers=h).json()["data"]
        assert rec["total_cost"] == cost and rec["tokens_completion"] == 4
