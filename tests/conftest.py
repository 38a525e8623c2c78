"""Fixtures every test folder shares: the tiny demo checkpoint (written once per session) and its tokenizer.

The repo root goes on sys.path so tests import the `benchmarks` tooling (suite/, probes/) like scripts do.
Tests must treat the shared checkpoint as read-only; a test that edits a checkpoint writes its own
with `write_demo_model` into its `tmp_path`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The tiny demo checkpoint (default seed): config, tokenizer, chat template, random weights."""
    from gemmaserve.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("tiny-demo"), "tiny")


@pytest.fixture(scope="session")
def demo_tokenizer(demo_dir: Path):
    """The demo checkpoint's tokenizer (the real Gemma 4 control-token ids)."""
    from gemmaserve.tokenizer import Tokenizer

    return Tokenizer.from_dir(demo_dir)


@pytest.fixture(scope="session")
def tiny_fp32(demo_dir: Path):
    """(path, model, config, tokenizer): the demo checkpoint loaded once in float32 for engine tests."""
    import torch

    from gemmaserve.model.loader import load_model
    from gemmaserve.tokenizer import Tokenizer

    model, config = load_model(demo_dir, dtype=torch.float32)
    return demo_dir, model, config, Tokenizer.from_dir(demo_dir)
