#!/usr/bin/env bash
# The GPU measurements behind benchmarks/suite/RESULTS.md's GPU section, as one script for a short device
# lease: the CUDA tests, then the real 26B-A4B shape with random weights (--dummy-weights) through
# gemmaserve (a prefill profile with an A/B of the grouped-GEMM MoE, CUDA graphs on, then
# --enforce-eager) and transformers, and a serving run. Every step
# has its own time limit and writes its log and JSON under $RUN_DIR, so one failing step costs only
# itself.
#
#   RUN_DIR=/tmp/gpu TAR=$OUT/gpu.tgz STEPS="tests offline eager hf serving" benchmarks/suite/gpu_run.sh
#
# Knobs (env): PY (python with torch+CUDA, default python3), RUN_DIR, TAR (re-packed after every step:
# one file to fetch), DEVICE (cuda; cpu only to try the script), STEPS, MODEL (a config-only
# checkpoint dir; written with make-demo-model --size 26b-a4b if missing), BATCHES (1,8,32),
# REPEATS (2; HF_REPEATS 1: transformers is slow), P / O (512 / 128), MAX_SEQS (32), MAX_LEN (4096), and T_<STEP> (seconds per step).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
PY=${PY:-python3}
RUN_DIR=${RUN_DIR:-$REPO/benchmarks/out/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
STEPS=${STEPS:-"tests profile dprofile compile offline eager hf serving"}
MODEL=${MODEL:-/tmp/gemmaserve-g26}
BATCHES=${BATCHES:-1,8,32}
REPEATS=${REPEATS:-2}
P=${P:-512}
O=${O:-128}
MAX_SEQS=${MAX_SEQS:-32}
MAX_LEN=${MAX_LEN:-4096}
DEVICE=${DEVICE:-cuda}
TAR=${TAR:-}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
mkdir -p "$RUN_DIR"

log() { echo "[gpu_run $(date -u +%H:%M:%S)] $*" | tee -a "$RUN_DIR/commands.txt" >&2; }
# step NAME SECONDS CMD...: the command verbatim in commands.txt, its output in NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    log "\$ timeout $limit $(printf '%q ' "$@")"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$RUN_DIR/$name.log" 2>&1
    local rc=$?
    log "$name: rc=$rc in $((SECONDS - t0)) s"
    tail -n 25 "$RUN_DIR/$name.log" >&2
    pack
}
pack() { if [[ -n $TAR ]]; then tar czf "$TAR" -C "$RUN_DIR" .; fi; }
want() { [[ " $STEPS " == *" $1 "* ]]; }

{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "gpu: none"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
    echo "gemmaserve_commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- gemmaserve 2>/dev/null || echo '+dirty')"
    "$PY" -c 'import sys, torch, transformers; print(f"python: {sys.version.split()[0]}\ntorch: {torch.__version__} (CUDA {torch.version.cuda})\ntransformers: {transformers.__version__}")'
} | tee "$RUN_DIR/machine.txt" >&2

if [[ ! -f $MODEL/config.json ]]; then
    "$PY" -m gemmaserve.cli make-demo-model "$MODEL" --size 26b-a4b >&2
fi
KW="{\"max_num_seqs\": $MAX_SEQS, \"max_model_len\": $MAX_LEN}"
KW_EAGER="{\"max_num_seqs\": $MAX_SEQS, \"max_model_len\": $MAX_LEN, \"enforce_eager\": true}"
THROUGHPUT=("$PY" -m benchmarks.suite.throughput --model "$MODEL" --dummy-weights --device "$DEVICE"
            --input-len "$P" --output-len "$O")

if want tests; then
    step tests "${T_TESTS:-150}" "$PY" -m pytest -q -x -p no:cacheprovider -m gpu \
        tests/engine/test_cuda_graph_gpu.py tests/model/test_parity_gpu.py
fi
if want profile; then
    step profile "${T_PROFILE:-150}" "$PY" -m benchmarks.probes.profile_prefill --model "$MODEL" --dummy-weights \
        --device "$DEVICE" --input-len "$P" --ab --batches 1,"$MAX_SEQS" \
        --llm-kwargs "$KW"
fi
if want dprofile; then
    for b in 1 "$MAX_SEQS"; do
        step "dprofile_b$b" "${T_DPROFILE:-70}" "$PY" -m benchmarks.probes.profile_decode --model "$MODEL" --dummy-weights \
            --device "$DEVICE" --batch "$b" --steps 24 --input-len "$P" --top 25 --llm-kwargs "$KW"
    done
    step dprofile_eager_b1 "${T_DPROFILE:-70}" "$PY" -m benchmarks.probes.profile_decode --model "$MODEL" --dummy-weights \
        --device "$DEVICE" --batch 1 --steps 24 --input-len "$P" --top 25 --llm-kwargs "$KW_EAGER"
fi
if want compile; then
    # Experimental: the 1-stream bucket's step through torch.compile before capture, vs dprofile_b1.
    step compile_b1 "${T_COMPILE:-170}" env GEMMASERVE_COMPILE_DECODE="${COMPILE_BUCKETS:-1x1024}" \
        "$PY" -m benchmarks.probes.profile_decode --model "$MODEL" --dummy-weights --device "$DEVICE" --batch 1 \
        --steps 24 --input-len "$P" --top 25 --llm-kwargs "$KW"
fi
if want offline; then
    step offline "${T_OFFLINE:-180}" "${THROUGHPUT[@]}" --repeats "$REPEATS" --engines gemmaserve --batch-sizes "$BATCHES" \
        --llm-kwargs "$KW" --output "$RUN_DIR/offline_gemmaserve.json"
fi
if want eager; then
    step eager "${T_EAGER:-120}" "${THROUGHPUT[@]}" --repeats "$REPEATS" --engines gemmaserve --batch-sizes "${EAGER_BATCHES:-1,8}" \
        --llm-kwargs "$KW_EAGER" --output "$RUN_DIR/offline_gemmaserve_eager.json"
fi
if want hf; then
    step hf "${T_HF:-150}" "${THROUGHPUT[@]}" --repeats "${HF_REPEATS:-1}" --engines transformers --batch-sizes "${HF_BATCHES:-1,8}" \
        --output "$RUN_DIR/offline_transformers.json"
fi
if want serving; then
    step serving "${T_SERVING:-150}" "$PY" -m benchmarks.suite.serving --spawn "gemmaserve:$MODEL" \
        --gemmaserve-args "--dummy-weights --device $DEVICE --max-num-seqs $MAX_SEQS --max-model-len $MAX_LEN" \
        --tokenizer "$MODEL" --concurrency 1,32 --num-prompts 8,96 --input-len "$P" --output-len "$O" \
        --log-dir "$RUN_DIR" --output "$RUN_DIR/serving.json"
fi
log "done"
pack
