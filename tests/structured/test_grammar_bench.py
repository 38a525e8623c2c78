"""Smoke test of benchmarks/grammar_bench.py on the tiny demo tokenizer (llguidance only)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "grammar_bench.py"


def test_grammar_bench_summary_on_tiny_vocab(capsys):
    spec = importlib.util.spec_from_file_location("grammar_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--tokenizer", "demo", "--vocab", "512", "--seqs", "2", "--libs", "llguidance"])
    ll = summary["llguidance"]
    assert summary["vocab"] == 512
    assert ll["json_valid"] == "2/2"
    assert ll["gemma_tool_call_special_tokens"].endswith("2/2 random calls well-formed")
    assert ll["mask_per_token_incl_apply"]["n"] == sum(ll["tokens_per_seq"])
    assert '"llguidance"' in capsys.readouterr().out  # the one JSON summary is printed
