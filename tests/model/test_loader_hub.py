"""Tests for gemmaserve.model.hub: local paths, offline and unreachable hub errors, the hub cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gemmaserve.model import hub
from gemmaserve.model.hub import ALLOW_PATTERNS, ModelNotFoundError, resolve_model_path


def test_local_directory_is_returned(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == tmp_path


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize("model", ["./nope", "/nope/at/all", "~/nope-gemmaserve", "a/b/c"])
def test_missing_paths_never_reach_the_hub(model, monkeypatch):
    monkeypatch.setattr(hub, "_download", lambda *a: pytest.fail("tried the hub"))
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        resolve_model_path(model)


def test_hub_id_download_asks_for_the_serving_files(tmp_path, monkeypatch):
    seen = {}

    def fake(repo_id, **kw):
        seen.update(kw, repo_id=repo_id)
        (tmp_path / "config.json").write_text("{}")
        return str(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model_path("google/gemma-4-26B-A4B-it") == tmp_path
    assert seen["repo_id"] == "google/gemma-4-26B-A4B-it" and seen["local_files_only"] is False
    for pattern in ("config.json", "*.safetensors", "tokenizer.json", "chat_template.jinja",
                    "generation_config.json", "model.safetensors.index.json", "tokenizer_config.json"):
        assert pattern in seen["allow_patterns"]
    assert ALLOW_PATTERNS == seen["allow_patterns"]


SCRIPT = """
from gemmaserve.model.hub import resolve_model_path, ModelNotFoundError
try:
    print("OK", resolve_model_path("acme/tiny-gemma"))
except ModelNotFoundError as e:
    print("ERR", e)
"""


def _run(tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full.update(HF_HOME=str(tmp_path / "hf"), **env)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    return out.stdout.strip()


def test_offline_and_not_cached_is_a_one_line_error(tmp_path):
    out = _run(tmp_path, HF_HUB_OFFLINE="1")
    assert out == "ERR acme/tiny-gemma: not a local directory, HF_HUB_OFFLINE is set and it is not in the hub cache"


def test_unreachable_hub_says_so(tmp_path):
    out = _run(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on port 9
    assert out.startswith("ERR acme/tiny-gemma: not a local directory and the Hugging Face hub cannot be reached")
    assert "\n" not in out


def test_offline_uses_the_hub_cache(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-gemma"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert _run(tmp_path, HF_HUB_OFFLINE="1") == f"OK {snap}"
