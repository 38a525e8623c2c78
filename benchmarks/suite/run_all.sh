#!/usr/bin/env bash
# Runs every measurement behind benchmarks/suite/RESULTS.md, baseline and candidate in the same
# invocation, and leaves the JSON, logs and machine facts under benchmarks/out/<stamp>/.
#
#   benchmarks/suite/run_all.sh                # everything
#   STEPS="roofline offline" benchmarks/suite/run_all.sh
#
# Knobs (env): MODEL (bench checkpoint dir, written if missing), GGUF (bf16 GGUF, converted if
# missing), STEPS (any of: roofline offline llama_offline serving ttft), P, O (prompt / output
# tokens, 512 / 128), REPEATS (3), SERVE_N (prompts of the 32-concurrent run, 64),
# TTFT_N1 / TTFT_N16 (prompts of the 1- and 16-concurrent runs, 8 / 64: past the first 16,
# requests arrive one at a time as others finish, which the steady-state TTFT reports), THREADS (2),
# GEMMASERVE_ARGS (extra `gemmaserve serve` flags), LLM_KWARGS (JSON for LLM(...)).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
PY=$REPO/.venv/bin/python
CACHE=${BENCH_CACHE:-$HOME/.cache/gemmaserve-bench}
MODEL=${MODEL:-$CACHE/bench-model}
GGUF=${GGUF:-$CACHE/bench-bf16.gguf}
STEPS=${STEPS:-"roofline offline llama_offline serving ttft"}
P=${P:-512}
O=${O:-128}
REPEATS=${REPEATS:-3}
SERVE_N=${SERVE_N:-64}
TTFT_N1=${TTFT_N1:-8}
TTFT_N16=${TTFT_N16:-64}
THREADS=${THREADS:-2}
GEMMASERVE_ARGS=${GEMMASERVE_ARGS:-"--max-num-seqs 32"}
LLM_KWARGS=${LLM_KWARGS:-"{}"}
OUT=${OUT:-$REPO/benchmarks/out/$(date -u +%Y%m%dT%H%M%SZ)}
BIN=$CACHE/build-llama.cpp/bin
mkdir -p "$OUT"

log() { echo "[run_all $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/commands.txt" >&2; }
# Every command that produces a number is logged verbatim, so RESULTS.md can quote it.
run() { log "\$ $(printf '%q ' "$@")"; "$@"; }

# -- inputs -----------------------------------------------------------------------------------------
if [[ ! -f $MODEL/config.json ]]; then
    run "$REPO/.venv/bin/gemmaserve" make-demo-model "$MODEL" --size bench
fi
benchmarks/suite/setup_llamacpp.sh build
if [[ ! -f $GGUF ]]; then
    run benchmarks/suite/setup_llamacpp.sh convert "$MODEL" "$GGUF" bf16
fi

# -- machine and versions ---------------------------------------------------------------------------
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores visible"
    echo "cpu_flags: $(grep -o -w 'avx512f\|avx512_bf16\|avx512_vnni\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "memory: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
    echo "load_before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "gemmaserve_commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gemmaserve || echo '+dirty')"
    "$PY" -c 'import sys, torch, transformers; print(f"python: {sys.version.split()[0]}\ntorch: {torch.__version__}\ntransformers: {transformers.__version__}")'
    echo "llama.cpp: vendored in llama-cpp-python 0.3.36 ($("$BIN/llama-server" --version 2>&1 | grep -m1 version || true))"
    echo "model: $MODEL"
    echo "gguf: $GGUF ($(du -h "$GGUF" | cut -f1))"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

for step in $STEPS; do
    case $step in
    roofline)
        run "$PY" -m benchmarks.suite.roofline --model "$MODEL" --threads "$THREADS" > "$OUT/roofline.json"
        ;;
    offline)
        # Prefill 512, decode 1 stream, decode 8 streams: gemmaserve LLM vs transformers generate.
        run "$PY" -m benchmarks.suite.throughput --model "$MODEL" --input-len "$P" --output-len "$O" \
            --batch-sizes 8 --repeats "$REPEATS" --threads "$THREADS" --llm-kwargs "$LLM_KWARGS" \
            --output "$OUT/throughput.json" > /dev/null
        ;;
    llama_offline)
        # llama.cpp's own tools on the same weights: pp512/tg128 (llama-bench) and 8 parallel
        # sequences (llama-batched-bench: S_TG is the decode throughput over all sequences).
        run "$BIN/llama-bench" -m "$GGUF" -p "$P" -n "$O" -t "$THREADS" -r "$REPEATS" -o json \
            > "$OUT/llama_bench.json"
        run "$BIN/llama-batched-bench" -m "$GGUF" -c $((8 * (P + O + 16))) -b 2048 -ub 512 \
            -npp "$P" -ntg "$O" -npl 1,8 -t "$THREADS" -tb "$THREADS" --output-format jsonl \
            > "$OUT/llama_batched_bench.jsonl" 2> "$OUT/llama_batched_bench.log"
        ;;
    serving)
        # 32 concurrent streams: gemmaserve vs llama-server with 32 parallel slots.
        run "$PY" -m benchmarks.suite.serving --spawn "gemmaserve:$MODEL" --spawn "llama:$GGUF:32" \
            --gemmaserve-args "$GEMMASERVE_ARGS" --concurrency 32 --num-prompts "$SERVE_N" \
            --input-len "$P" --output-len "$O" --repeats "$REPEATS" --threads "$THREADS" \
            --tokenizer "$MODEL" --log-dir "$OUT/logs" --output "$OUT/serving_c32.json" > /dev/null
        ;;
    ttft)
        # TTFT at 1 and at 16 concurrent streams in one run; llama-server (16 slots) for reference.
        run "$PY" -m benchmarks.suite.serving --spawn "gemmaserve:$MODEL" --spawn "llama:$GGUF:16" \
            --gemmaserve-args "$GEMMASERVE_ARGS" --concurrency 1,16 --num-prompts "$TTFT_N1,$TTFT_N16" \
            --input-len "$P" --output-len "$O" --repeats "$REPEATS" --threads "$THREADS" \
            --tokenizer "$MODEL" --log-dir "$OUT/logs" --output "$OUT/ttft.json" > /dev/null
        ;;
    *) log "unknown step $step"; exit 2 ;;
    esac
done
echo "load_after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
"$PY" -m benchmarks.suite.report "$OUT" > "$OUT/tables.md"
log "done: $OUT (tables in $OUT/tables.md)"
