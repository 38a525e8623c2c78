"""Fixtures for the cluster tests: the tiny demo model and its tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from gemmaserve.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("tiny-demo"), "tiny")


@pytest.fixture(scope="session")
def demo_tokenizer(demo_dir):
    from gemmaserve.tokenizer import Tokenizer

    return Tokenizer.from_dir(demo_dir)
