#!/usr/bin/env bash
# Builds and runs one fuzz target for N seconds (default 60; target default `container`),
# then prints how many inputs it executed.
#
#   fuzz/run.sh [seconds] [target] [extra libFuzzer flags...]
#   e.g. fuzz/run.sh 600 -jobs=2        fuzz/run.sh 60 peft        fuzz/run.sh 600 peft -jobs=2
#   GRAFT_FUZZ_MIN_EXECS=N fuzz/run.sh 60 kinds     # fail when fewer than N inputs ran
#   fuzz/run.sh cmin [target]                        # fold what runs found into the committed corpus
#
# Targets: `container` (model files: envelope, graph JSON, planning, execution), `peft`
# (PEFT LoRA adapters: config, safetensors, validation, forward pass) and `kinds` (the
# ssf-pool, error-memory and routing adapter files: load, runs with mixed row groups,
# tickets and feedback, saved error-memory state). A second
# argument that starts with `-` is a libFuzzer flag, not a target, so the old
# `run.sh SECONDS FLAGS...` form still fuzzes `container`.
#
# Corpora: `fuzz/corpus/<target>/` is committed — the generated seeds plus what earlier
# campaigns found, minimised with `cargo fuzz cmin` (`run.sh cmin` redoes it); libFuzzer
# only reads it. Each run first writes the generated seeds (examples/seed_corpus.rs) into
# `fuzz/work/<target>/` (not committed), where libFuzzer also stores what it finds.
#
# The count: libFuzzer's `stat::number_of_executed_units` (`-print_final_stats=1`), printed
# as `run.sh: <target>: N executions in S s`. With GRAFT_FUZZ_MIN_EXECS set, a run that
# executed fewer inputs fails (CI sets a floor per target, so a target that stalls — a
# slow path, a hang short of the timeout, a build without optimisations — is noticed).
# The floor needs the count, so it cannot be combined with -jobs/-workers (whose workers
# log to files).
#
# Uses the nightly toolchain when rustup has one (unless GRAFT_FUZZ_STABLE=1), else the
# default toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z sanitizer flags). Installs
# cargo-fuzz (`cargo install cargo-fuzz --locked`) if it is missing. Exits non-zero when
# the target crashes or fails to build; the reproducer is saved under
# fuzz/artifacts/<target>/ and replays with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"

mode=run
if [[ "${1:-}" == cmin ]]; then
    mode=cmin
    shift
    seconds=0
else
    seconds="${1:-60}"
    if [[ $# -gt 0 ]]; then shift; fi
fi
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
work="work/$target"
mkdir -p "$corpus" "$work"

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

cargo $toolchain run --quiet --example seed_corpus -- --target "$target" "$work"
cargo $toolchain fuzz build "$target"

if [[ $mode == cmin ]]; then
    # The committed corpus becomes the smallest set with the coverage of itself, the
    # seeds and everything earlier runs stored in work/.
    before=$(find "$corpus" -type f | wc -l)
    find "$work" -type f -exec cp -n {} "$corpus"/ \;
    cargo $toolchain fuzz cmin "$target" "$corpus"
    echo "run.sh: $target: corpus minimised: $before committed + $(find "$work" -type f | wc -l) found -> $(find "$corpus" -type f | wc -l) files, $(du -sk "$corpus" | cut -f1) KiB"
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo $toolchain fuzz run "$target" "$work" "$corpus" -- -max_total_time="$seconds" -print_final_stats=1 "$@" 2>&1 \
    | tee "$log"
rc=${PIPESTATUS[0]}
set -e
execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
echo "run.sh: $target: ${execs:-unknown} executions in $seconds s (rc $rc)"
if [[ $rc -ne 0 ]]; then
    exit "$rc"
fi
if [[ -n "${GRAFT_FUZZ_MIN_EXECS:-}" ]]; then
    if [[ -z "$execs" ]]; then
        echo "run.sh: $target: no execution count in libFuzzer's output (GRAFT_FUZZ_MIN_EXECS needs one process, no -jobs)" >&2
        exit 1
    fi
    if ((execs < GRAFT_FUZZ_MIN_EXECS)); then
        echo "run.sh: $target: $execs executions, below the floor of $GRAFT_FUZZ_MIN_EXECS" >&2
        exit 1
    fi
    echo "run.sh: $target: floor $GRAFT_FUZZ_MIN_EXECS met"
fi
