"""CLI smoke tests: make-demo-model then generate on it, in subprocesses like a user would."""

import importlib.util
import json
import subprocess
import sys

from gemmaserve.cli import build_parser


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gemmaserve.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_make_demo_model_then_generate_streams_text(tmp_path):
    model = tmp_path / "tiny"
    made = cli("make-demo-model", str(model), "--size", "tiny")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(model)
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()

    run = cli("generate", "--model", str(model), "--prompt", "Hello there", "--max-tokens", "5",
              "--temperature", "0", "--ignore-eos", "--dtype", "float32", "--show-ids")
    assert run.returncode == 0, run.stderr
    assert "[finish_reason=length tokens=5]" in run.stderr
    ids_line = [line for line in run.stdout.splitlines() if line.startswith("token_ids: ")]
    assert len(ids_line) == 1 and len(json.loads(ids_line[0][len("token_ids: "):])) == 5

    # --chat renders the template (the CHAT teammate's renderer) before generating
    # (sampled with the checkpoint's generation defaults and a seed: the defaults path runs too)
    chat = cli("generate", "--model", str(model), "--prompt", "Hi", "--chat", "--max-tokens", "3",
               "--seed", "7", "--ignore-eos", "--dtype", "float32", "--show-ids")
    assert chat.returncode == 0, chat.stderr
    assert "[finish_reason=length tokens=3]" in chat.stderr


def test_generate_reports_missing_model_without_traceback(tmp_path):
    run = cli("generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr


def test_parser_has_subcommands():
    parser = build_parser()
    args = parser.parse_args(["generate", "--model", "m", "--prompt", "p", "--stop", "a", "--stop", "b", "--top-k", "5"])
    assert args.stop == ["a", "b"] and args.top_k == 5 and args.max_tokens == 64
    assert args.temperature is None and args.top_p is None  # generation_config.json decides
    args = parser.parse_args(["make-demo-model", "d", "--size", "small"])
    assert args.size == "small" and args.dir == "d"
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"generate", "make-demo-model"} <= set(sub.choices)
    if importlib.util.find_spec("gemmaserve.api.cli_serve") is not None:
        assert "serve" in sub.choices  # registered by the API teammate's add_serve_parser
