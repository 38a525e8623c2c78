#!/usr/bin/env bash
# Builds llama.cpp's llama-server (from the llama-cpp-python sdist) and converts a checkpoint to GGUF.
#
# Benchmark tooling only: gemmaserve never imports or links any of this. Everything lands in a
# cache dir outside the repo so that `git status` stays clean and the build is reused across runs.
#
#   benchmarks/suite/setup_llamacpp.sh build                 # download sdist + build llama-server
#   benchmarks/suite/setup_llamacpp.sh venv                  # converter venv (gguf-py, numpy, torch, ...)
#   benchmarks/suite/setup_llamacpp.sh convert CKPT_DIR OUT.gguf [bf16|f32|q8_0]
#   benchmarks/suite/setup_llamacpp.sh all [CKPT_DIR OUT.gguf] # build + venv (+ convert)
#   benchmarks/suite/setup_llamacpp.sh server-path           # prints the llama-server binary path
#
# Env knobs: BENCH_CACHE (default ~/.cache/gemmaserve-bench), BENCH_VENV (default /tmp/bench-venv),
# JOBS (default 2), PYTHON (default: the base interpreter of the repo's .venv, else python3).
set -euo pipefail

LLAMA_CPP_PY_VERSION=0.3.36
CACHE=${BENCH_CACHE:-$HOME/.cache/gemmaserve-bench}
BVENV=${BENCH_VENV:-/tmp/bench-venv}
JOBS=${JOBS:-2}
SRC=$CACHE/llama_cpp_python-$LLAMA_CPP_PY_VERSION
LLAMA=$SRC/vendor/llama.cpp
BUILD=$CACHE/build-llama.cpp
SERVER=$BUILD/bin/llama-server
# The repo's own venv has torch (CPU) + transformers; reuse its interpreter's site-packages for the
# converter's heavy deps so we do not download torch a second time.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The converter venv borrows the repo venv's packages, so it must use the same base interpreter.
if [[ -z ${PYTHON:-} && -x $REPO_ROOT/.venv/bin/python ]]; then
    PYTHON=$("$REPO_ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')
fi
PYTHON=${PYTHON:-python3}

log() { echo "[setup_llamacpp] $*" >&2; }

fetch_sdist() {
    if [[ -f $LLAMA/CMakeLists.txt ]]; then return; fi
    mkdir -p "$CACHE"
    log "downloading llama-cpp-python==$LLAMA_CPP_PY_VERSION sdist"
    "$PYTHON" -m pip download --no-binary :all: --no-deps -d "$CACHE" \
        "llama-cpp-python==$LLAMA_CPP_PY_VERSION"
    tar -xzf "$CACHE/llama_cpp_python-$LLAMA_CPP_PY_VERSION.tar.gz" -C "$CACHE"
    [[ -f $LLAMA/CMakeLists.txt ]] || { log "vendored llama.cpp missing in sdist"; exit 1; }
}

build_server() {
    fetch_sdist
    if [[ -x $SERVER && -x $BUILD/bin/llama-bench && -x $BUILD/bin/llama-batched-bench ]]; then
        log "llama.cpp tools already built in $BUILD/bin"; return
    fi
    log "configuring (CPU, GGML_NATIVE=ON, Release)"
    # nice: the build machine is shared; the build must not starve interactive work.
    nice -n 19 cmake -S "$LLAMA" -B "$BUILD" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
    # llama-bench (pp/tg, one sequence) and llama-batched-bench (N parallel sequences) give the
    # offline rows; llama-server the serving rows.
    log "building llama-server, llama-bench, llama-batched-bench with -j$JOBS"
    nice -n 19 cmake --build "$BUILD" --config Release -j "$JOBS" \
        --target llama-server llama-bench llama-batched-bench
    [[ -x $SERVER ]] || { log "build finished but $SERVER is missing"; exit 1; }
    log "built $SERVER"
}

make_venv() {
    fetch_sdist
    if [[ -f $BVENV/.ready ]]; then return; fi
    # --system-site-packages off: a clean venv, but we point it at the repo venv's torch and
    # transformers through a .pth file (same versions as the reference, no second torch download).
    "$PYTHON" -m venv "$BVENV"
    "$BVENV/bin/pip" install -q --upgrade pip
    "$BVENV/bin/pip" install -q "$LLAMA/gguf-py" numpy sentencepiece protobuf
    local repo_site
    repo_site=$("$REPO_ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    local own_site
    own_site=$("$BVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # Appended after the venv's own site-packages, so the vendored gguf-py wins over any other copy.
    echo "$repo_site" > "$own_site/zz-gemmaserve-repo-venv.pth"
    "$BVENV/bin/python" -c 'import gguf, torch, transformers, numpy; print("converter deps ok", gguf.__file__)'
    touch "$BVENV/.ready"
}

convert() {
    local ckpt=$1 out=$2 outtype=${3:-bf16}
    make_venv
    log "converting $ckpt -> $out ($outtype)"
    "$BVENV/bin/python" "$LLAMA/convert_hf_to_gguf.py" "$ckpt" --outfile "$out" --outtype "$outtype"
    log "wrote $out"
}

cmd=${1:-all}
case $cmd in
    fetch) fetch_sdist ;;
    build) build_server ;;
    venv) make_venv ;;
    convert) shift; convert "$@" ;;
    server-path) echo "$SERVER" ;;
    all)
        build_server
        make_venv
        if [[ $# -ge 3 ]]; then convert "$2" "$3" "${4:-bf16}"; fi
        ;;
    *) log "unknown command: $cmd"; exit 2 ;;
esac
