"""Turns one run_all.sh output folder into the markdown tables and target verdicts of RESULTS.md.

    python -m benchmarks.suite.report benchmarks/out/20261125T210500Z > tables.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    if not path.exists():
        return None
    if path.suffix == ".jsonl":
        rows = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
        return rows
    return json.loads(path.read_text())


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def llama_offline(bench: list[dict] | None, batched: list[dict] | None) -> dict[str, float]:
    """llama.cpp's prefill / 1-stream decode (llama-bench, median of samples) and 8-stream decode
    (llama-batched-bench S_TG at pl=8)."""
    out: dict[str, float] = {}
    for row in bench or []:
        rate = statistics.median(row["samples_ts"]) if row.get("samples_ts") else row.get("avg_ts")
        if row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0:
            out["prefill_tok_s"] = rate
        elif row.get("n_gen", 0) > 0 and row.get("n_prompt", 0) == 0:
            out["decode_tok_s"] = rate
    for row in batched or []:
        if row.get("pl") == 8:
            out["decode_x8_tok_s"] = row["speed_tg"]
        if row.get("pl") == 1:
            out["batched_bench_decode_x1_tok_s"] = row["speed_tg"]
    return out


def _serving_rows(report: dict | None) -> dict[tuple[str, int], dict]:
    rows = {}
    for r in (report or {}).get("results", []):
        rows[(r["endpoint"], r["concurrency"])] = r["summary"]
    return rows


def _p50(summary: dict | None, key: str) -> float | None:
    return ((summary or {}).get(key) or {}).get("median")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _window(summary: dict, name: str) -> str:
    """p50 of one TTFT window with its request count, or n/a (older JSON has no windows)."""
    win = (summary.get("ttft_windows") or {}).get(name)
    p50 = _p50(summary, f"ttft_{name}_ms")
    if not win:
        return "n/a"
    return f"{_fmt(p50)} (n={int(win['completed'])})"


def verdict(value: float | None, target: float | None, higher_is_better: bool = True) -> str:
    if value is None or target is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return f"{'MET' if ok else 'MISSED'} ({value / target:.2f}x of target)"


def render(out_dir: Path) -> str:
    roof = _load(out_dir / "roofline.json")
    thr = _load(out_dir / "throughput.json")
    llama = llama_offline(_load(out_dir / "llama_bench.json"), _load(out_dir / "llama_batched_bench.jsonl"))
    serve = _serving_rows(_load(out_dir / "serving_c32.json"))
    ttft = _serving_rows(_load(out_dir / "ttft.json"))
    res = (thr or {}).get("results", {})
    gs, hf = res.get("gemmaserve", {}), res.get("transformers", {})
    lines = []
    machine = (out_dir / "machine.txt").read_text() if (out_dir / "machine.txt").exists() else ""
    lines += ["Machine and versions:", "", "```", machine.strip(), "```", ""]

    P = (thr or {}).get("config", {}).get("input_len", 512)
    lines += [f"| engine | prefill, {P} tokens | decode, 1 stream | decode, 8 streams (total) |", "|---|---|---|---|"]
    for name, row in (("gemmaserve `LLM`", gs), ("transformers `generate`", hf), ("llama.cpp (bf16 GGUF)", llama)):
        lines.append(f"| {name} | {_fmt(row.get('prefill_tok_s'))} tok/s | {_fmt(row.get('decode_tok_s'))} tok/s "
                     f"| {_fmt(row.get('decode_x8_tok_s'))} tok/s |")
    if roof:
        lines.append(f"| bandwidth limit ({roof['active_bytes_per_token'] / 1e6:,.0f} MB/token at "
                     f"{roof['bandwidth_gb_s']:.1f} GB/s) | | {_fmt(roof['decode_limit_tok_s'])} tok/s | |")
    lines.append("")

    g32, l32 = serve.get(("gemmaserve", 32)), serve.get(("llama", 32))
    scfg = (_load(out_dir / "serving_c32.json") or {}).get("config", {})
    shape = f"{scfg.get('input_len', '?')} in / {scfg.get('output_len', '?')} out"
    lines += [f"| 32 concurrent, {shape} | output tok/s | req/s | TTFT p50 / p99 (ms) | TPOT p50 (ms) "
              "| ITL p50 / p99 (ms) | E2EL p50 (ms) | failed |", "|---|---|---|---|---|---|---|---|"]
    for name, s in (("gemmaserve", g32), ("llama-server -np 32", l32)):
        if s:
            lines.append(
                f"| {name} | {_fmt(s['output_throughput'], 1)} | {_fmt(s['request_throughput'], 3)} "
                f"| {_fmt(s['ttft_ms']['median'])} / {_fmt(s['ttft_ms']['p99'])} | {_fmt(s['tpot_ms']['median'], 1)} "
                f"| {_fmt(s['itl_ms']['median'], 1)} / {_fmt(s['itl_ms']['p99'], 1)} | {_fmt(s['e2el_ms']['median'])} "
                f"| {int(s['failed'])} |"
            )
    lines.append("")

    lines += [f"| TTFT, {P}-token prompts | 1 stream p50 (ms) | 16 streams p50, all (ms) "
              "| 16 streams, burst p50 (ms) | 16 streams, steady p50 (ms) | ratio steady/1 | ratio all/1 "
              "| 16 streams p99 (ms) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in ("gemmaserve", "llama"):
        one, six = ttft.get((name, 1)), ttft.get((name, 16))
        if one and six:
            a, b = one["ttft_ms"]["median"], six["ttft_ms"]["median"]
            burst, steady = _window(six, "burst"), _window(six, "steady")
            lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {burst} | {steady} "
                         f"| {_fmt(_ratio(_p50(six, 'ttft_steady_ms'), a), 2)} | {_fmt(_ratio(b, a), 2)} "
                         f"| {_fmt(six['ttft_ms']['p99'])} |")
    lines += ["", "Burst: the first 16 requests, all sent at t=0; steady: each later request, sent when an "
              "earlier one finished (15 others in flight), as `vllm bench serve --max-concurrency 16`. "
              "n = successful requests in the window (failed ones are counted in the table above).", ""]

    # Issue 4's targets, each against the baseline measured in the same run.
    g1 = (ttft.get(("gemmaserve", 1)) or {}).get("ttft_ms", {}).get("median")
    g16 = (ttft.get(("gemmaserve", 16)) or {}).get("ttft_ms", {}).get("median")
    g16_steady = _p50(ttft.get(("gemmaserve", 16)), "ttft_steady_ms")
    g16_burst = _p50(ttft.get(("gemmaserve", 16)), "ttft_burst_ms")
    hf_dec = hf.get("decode_tok_s")
    lines += ["| target | measured | verdict |", "|---|---|---|"]
    targets = [
        ("decode 1 stream >= llama.cpp", gs.get("decode_tok_s"), llama.get("decode_tok_s"), True),
        ("decode 1 stream >= 3x transformers", gs.get("decode_tok_s"), hf_dec and 3 * hf_dec, True),
        ("32-concurrent output tok/s >= 2x llama-server -np 32", g32 and g32["output_throughput"],
         l32 and 2 * l32["output_throughput"], True),
        ("32-concurrent output tok/s >= 8x transformers 1 stream", g32 and g32["output_throughput"],
         hf_dec and 8 * hf_dec, True),
        ("prefill 512 >= transformers", gs.get("prefill_tok_s"), hf.get("prefill_tok_s"), True),
        ("TTFT p50 at 16 streams <= 2x 1-stream TTFT", g16, g1 and 2 * g1, False),
        ("  same, steady state (requests after the first 16)", g16_steady, g1 and 2 * g1, False),
        ("  same, burst (the first 16, sent at once)", g16_burst, g1 and 2 * g1, False),
    ]  # fmt: skip
    for name, value, target, higher in targets:
        lines.append(f"| {name} | {_fmt(value, 1)} vs target {_fmt(target, 1)} | {verdict(value, target, higher)} |")
    if roof and gs.get("decode_tok_s"):
        lines += ["", f"gemmaserve single-stream decode is {gs['decode_tok_s'] / roof['decode_limit_tok_s']:.0%} "
                      f"of the bandwidth limit ({_fmt(roof['decode_limit_tok_s'])} tok/s)."]  # fmt: skip
    commands = out_dir / "commands.txt"
    if commands.exists():
        cmds = [ln.split("$ ", 1)[1] for ln in commands.read_text().splitlines() if "$ " in ln]
        lines += ["", "Commands:", "", "```", *cmds, "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.suite.report OUT_DIR")
    print(render(Path(sys.argv[1])), end="")


if __name__ == "__main__":
    main()
