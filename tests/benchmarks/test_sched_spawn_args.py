"""serving.py --spawn-args: two configs of one server in one invocation, each with its own args."""

from __future__ import annotations


import pytest


from benchmarks.suite import serving


def test_spawn_args_replace_the_per_kind_args_for_the_named_server():
    args = serving.parse_args([
        "--spawn", "base=gemmaserve:/m", "--spawn", "cap=gemmaserve:/m", "--spawn", "llama:/m.gguf:4",
        "--gemmaserve-args", "--max-num-seqs 32", "--llama-args", "-c 4096",
        "--spawn-args", "cap=--max-num-seqs 32 --max-num-prefill-tokens 512",
    ])
    targets = serving._targets(args)
    assert [(t.name, t.spec.extra_args) for t in targets] == [
        ("base", ["--max-num-seqs", "32"]),
        ("cap", ["--max-num-seqs", "32", "--max-num-prefill-tokens", "512"]),
        ("llama", ["-c", "4096"]),
    ]


def test_spawn_args_for_an_unknown_name_is_an_error():
    args = serving.parse_args(["--spawn", "base=gemmaserve:/m", "--spawn-args", "typo=--max-num-seqs 4"])
    with pytest.raises(SystemExit, match="typo"):
        serving._targets(args)
