#!/usr/bin/env bash
# Builds and runs one fuzz target for N seconds (default 60; target default `container`).
#
#   fuzz/run.sh [seconds] [target] [extra libFuzzer flags...]
#   e.g. fuzz/run.sh 600 -jobs=2        fuzz/run.sh 60 peft        fuzz/run.sh 600 peft -jobs=2
#
# Targets: `container` (model files: envelope, graph JSON, planning, execution), `peft`
# (PEFT LoRA adapters: config, safetensors, validation, forward pass) and `kinds` (the
# ssf-pool, error-memory and routing adapter files: load, runs with mixed row groups,
# tickets and feedback, saved error-memory state). A second
# argument that starts with `-` is a libFuzzer flag, not a target, so the old
# `run.sh SECONDS FLAGS...` form still fuzzes `container`.
#
# Writes the seed corpus first (see examples/seed_corpus.rs) into fuzz/corpus/<target>,
# which libFuzzer then grows. Uses the nightly toolchain when rustup has one (unless
# GRAFT_FUZZ_STABLE=1), else the default toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz
# passes -Z sanitizer flags). Installs cargo-fuzz (`cargo install cargo-fuzz --locked`)
# if it is missing. Exits non-zero when the target crashes or fails to build; the
# reproducer is saved under fuzz/artifacts/<target>/ and replays with
# `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
if [[ $# -gt 0 ]]; then shift; fi
target=container
if [[ $# -gt 0 && "$1" != -* ]]; then
    target="$1"
    shift
fi
case "$target" in
    container | peft | kinds) ;;
    *)
        echo "run.sh: unknown fuzz target \`$target\` (targets: container, peft, kinds)" >&2
        exit 2
        ;;
esac
corpus="corpus/$target"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz (about a minute)" >&2
    cargo install cargo-fuzz --locked
fi
toolchain=""
if [[ -z "${GRAFT_FUZZ_STABLE:-}" ]] && command -v rustup >/dev/null 2>&1 \
    && rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain="+nightly"
else
    echo "run.sh: using $(rustc --version) with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
fi

cargo $toolchain run --quiet --example seed_corpus -- --target "$target" "$corpus"
cargo $toolchain fuzz build "$target"
exec cargo $toolchain fuzz run "$target" "$corpus" -- -max_total_time="$seconds" "$@"
