#!/usr/bin/env bash
# GPU check for graft's CUDA path: builds and runs the CUDA test suite on a real GPU and
# a short benchmark, then prints one report. Meant to finish within 5 minutes on an
# H200 (16 cores); each stage has its own timeout and the whole script one more.
#
#   kernels-cuda/gpu-check.sh            # from anywhere inside the repository
#
# Needs: an NVIDIA driver (libcuda.so.1), a Rust toolchain (cargo, rust >= 1.95), Python 3
# with pip for NVRTC if the machine has no CUDA toolkit. Installs only from PyPI and
# crates.io. Stages:
#   1. NVRTC + ptxas compile check (sm_87, sm_90, and the GPU's own arch via the tests)
#   2. kernel and session tests vs the CPU reference (runtime/tests/cuda.rs, GRAFT_GPU=1):
#      every op and weight format at GEMV and GEMM batch sizes, mixed LoRA/SSF batches
#      (BGMV and SGMV), refusals, hot swap under load
#   3. fixture parity end to end (tests/tests/cuda_fixtures.rs: dlrm_small and
#      dlrm_small_lora, GPU session vs the fixtures' PyTorch outputs)
#   4. CLI: graft run --device cuda:0 vs --device cpu
#   5. benchmark: q8 GEMV GB/s vs a device-to-device copy, BGMV, DLRM batch 1/256 GPU vs
#      CPU, and vs PyTorch on the same model when torch with CUDA is importable
# The 5-minute budget assumes a cold release build takes about 2-3 minutes on 16 cores; if
# the build stage reports TIME on a first run, rerun: cargo's cache makes it seconds.
set -uo pipefail
SCRIPT=$(readlink -f "$0")
cd "$(dirname "$SCRIPT")/.."
START=$(date +%s)
LOG=$(mktemp -d)/gpu-check
mkdir -p "$LOG"
declare -a RESULTS=()
elapsed() { echo $(($(date +%s) - START)); }
stage() { # name, timeout seconds, command...
    local name=$1 limit=$2
    shift 2
    printf '\n=== [%4ss] %s\n' "$(elapsed)" "$name"
    timeout "$limit" "$@" 2>&1 | tee "$LOG/$(echo "$name" | tr ' /:' '___').log"
    local rc=${PIPESTATUS[0]}
    if [[ $rc -eq 0 ]]; then RESULTS+=("PASS  $name"); elif [[ $rc -eq 124 ]]; then RESULTS+=("TIME  $name (over ${limit}s)"); else RESULTS+=("FAIL  $name (exit $rc)"); fi
    return 0
}

# The whole check must not outlive 5 minutes (plus a little for the report).
if [[ -z "${GPU_CHECK_INNER:-}" ]]; then
    GPU_CHECK_INNER=1 exec timeout "$([[ "${GRAFT_GPU_ZOO:-}" == 1 ]] && echo 660 || echo 330)" "$SCRIPT" "$@"
fi

echo "graft GPU check — $(date -u +%FT%TZ)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
else
    echo "nvidia-smi not found; continuing (the driver library is what matters)"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "ERROR: cargo not found. Install a Rust toolchain (https://rustup.rs, Rust 1.95 or newer) and rerun."
    exit 2
fi
cargo --version

# NVRTC: a CUDA toolkit's, else the PyPI wheel (the same one CI uses); ptxas likewise.
if [[ -z "${PTXAS:-}" ]] && command -v ptxas >/dev/null 2>&1; then export PTXAS=$(command -v ptxas); fi
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc.so.12' || [[ -z "${PTXAS:-}" ]]; then
    VENV=${GRAFT_GPU_VENV:-$PWD/target/gpu-check-venv}
    python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-nvcc-cu12==12.9.86 || { echo "ERROR: pip install of NVRTC failed"; exit 2; }
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    export LD_LIBRARY_PATH="$SITE/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PTXAS="$SITE/nvidia/cuda_nvcc/bin/ptxas"
fi
export GRAFT_GPU=1 GRAFT_CI=1 CARGO_TERM_COLOR=never
export GRAFT_CUDA_CACHE=${GRAFT_CUDA_CACHE:-$PWD/target/gpu-check-ptx-cache}
# One release build serves tests and benchmark (tract, a dev-dependency, stays at opt 0).
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-$(nproc)}

stage "build (release: graft+cuda tests, CLI, benchmark)" 200 bash -c '
    cargo build --release -p graft --features cuda --tests --example cuda_bench &&
    cargo build --release -p graft-kernels-cuda --features ci-compile --tests &&
    cargo build --release -p graft-tests --features cuda --test cuda_fixtures &&
    cargo build --release -p graft-cli --features cuda --tests'
stage "NVRTC + ptxas (sm_87, sm_90)" 60 cargo test --release -p graft-kernels-cuda --features ci-compile
stage "kernels and sessions vs the CPU reference" 90 \
    cargo test --release -p graft --features cuda --test cuda -- --test-threads 1
# Opt-in (outside the 5-minute budget: builds graft with the ONNX importer): the imported
# CTR zoo, whose tensor ops run on tensor.cu, against CPU sessions.
if [[ "${GRAFT_GPU_ZOO:-}" == 1 ]]; then
    stage "imported zoo models (tensor ops) vs the CPU" 300 \
        cargo test --release -p graft --features cuda,onnx --test cuda zoo_models -- --nocapture
fi
stage "fixture parity (dlrm_small, dlrm_small_lora)" 60 \
    cargo test --release -p graft-tests --features cuda --test cuda_fixtures
stage "CLI --device cuda:0" 60 cargo test --release -p graft-cli --features cuda --test cli device_flag
EXPORT=$LOG/torch-export
stage "benchmark" 90 cargo run --release -q -p graft --features cuda --example cuda_bench -- --export "$EXPORT"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    stage "PyTorch on the same model" 60 python3 kernels-cuda/bench_torch.py "$EXPORT"
else
    echo "PyTorch with CUDA is not importable here: the PyTorch comparison was skipped"
    RESULTS+=("SKIP  PyTorch comparison (no torch with CUDA)")
fi

printf '\n=== report (%ss) ===\n' "$(elapsed)"
printf '%s\n' "${RESULTS[@]}"
echo "--- benchmark"
grep -hE '^(device|gemv_q8|bgmv|e2e|torch) ' "$LOG"/benchmark.log "$LOG"/PyTorch_on_the_same_model.log 2>/dev/null
echo "logs: $LOG"
if printf '%s\n' "${RESULTS[@]}" | grep -qE '^(FAIL|TIME)'; then exit 1; fi
