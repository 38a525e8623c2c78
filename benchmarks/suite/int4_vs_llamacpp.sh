#!/usr/bin/env bash
# gemmaserve int4 vs llama.cpp Q4_K_M / Q4_0 on the same random weights: a real-width slice of the
# 26B-A4B (benchmarks/suite/int4_slice.py write), converted to GGUF bf16 and quantized by llama.cpp's
# own tools. Speed: llama-bench (512-token prefill, 32-token decode, one sequence) against
# benchmarks/suite/int4_26b.py on the same checkpoint. Accuracy: llama-perplexity's KL divergence and
# top-1 agreement of each quantization against the bf16 GGUF, beside int4_slice.py accuracy.
#
#   flock /tmp/gs-bench.lock benchmarks/suite/int4_vs_llamacpp.sh SLICE_DIR WORK_DIR
#
# Needs benchmarks/suite/setup_llamacpp.sh build + venv first; ~25 GB of disk under WORK_DIR.
set -euo pipefail
SLICE=$1
WORK=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$(dirname "$("$HERE/setup_llamacpp.sh" server-path)")
THREADS=${THREADS:-2}
mkdir -p "$WORK"
log() { echo "[int4_vs_llamacpp] $*" >&2; }

[[ -f $WORK/bf16.gguf ]] || "$HERE/setup_llamacpp.sh" convert "$SLICE" "$WORK/bf16.gguf" bf16
for q in Q4_K_M Q4_0; do
    [[ -f $WORK/$q.gguf ]] || "$BIN/llama-quantize" "$WORK/bf16.gguf" "$WORK/$q.gguf" "$q" "$THREADS" >&2
done

# Speed, one sequence: pp512 and tg32, medians of 3 repetitions (llama-bench's JSON has avg and stddev).
for q in Q4_K_M Q4_0; do
    log "llama-bench $q"
    "$BIN/llama-bench" -m "$WORK/$q.gguf" -p 512 -n 32 -t "$THREADS" -r 3 -o json > "$WORK/bench_$q.json"
done

# Accuracy: KL(bf16 || q) and "same top p" over the scored halves of 512-token chunks of a text the
# demo tokenizer splits into many tokens.
python3 - "$WORK/text.txt" <<'EOF'
import random, sys
random.seed(0)
words = [''.join(random.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(random.randint(2, 9))) for _ in range(3000)]
open(sys.argv[1], 'w').write(' '.join(random.choice(words) for _ in range(40000)))
EOF
"$BIN/llama-perplexity" -m "$WORK/bf16.gguf" -f "$WORK/text.txt" -c 512 --chunks 8 -t "$THREADS" \
    --kl-divergence-base "$WORK/base.kld" > "$WORK/ppl_bf16.txt" 2>&1
for q in Q4_K_M Q4_0; do
    "$BIN/llama-perplexity" -m "$WORK/$q.gguf" -t "$THREADS" --kl-divergence-base "$WORK/base.kld" \
        --kl-divergence > "$WORK/kld_$q.txt" 2>&1
done
grep -h -E "Mean +KLD|Same top p" "$WORK"/kld_*.txt >&2 || true
log "done: $WORK"
