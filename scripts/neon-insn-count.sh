#!/usr/bin/env bash
# Instructions per call of each NEON kernel, counted under qemu-aarch64 (speed cannot be
# timed under emulation; instruction counts are the proxy, and the criterion bench
# `cargo bench -p graft-kernels-neon --bench neon` times the same kernels on real ARM).
#
# Method: qemu-user 10 as packaged by Debian ships no TCG plugins (no libinsn.so), so each
# run uses `-one-insn-per-tb -d exec,nochain`, which logs one "Trace" line (with the guest
# PC) per executed instruction. The harness (kernels-neon/examples/insn_count.rs, release
# build) calls a marker function, runs the kernel R = 4 times, and calls a second marker;
# the lines between the two markers' PCs, divided by R, are the instructions of one call
# (loop overhead included, a handful). Shapes: 64 outputs × 256 inputs, batch m = 1 (GEMV)
# or 4 (GEMM); the bag adds one 256-column row.
#
# Needs: rustup target aarch64-unknown-linux-gnu, gcc-aarch64-linux-gnu, qemu-user.
# Output: a Markdown table (kernel, instructions per call, per multiply-accumulate).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}
cargo build -q --release -p graft-kernels-neon --example insn_count --target aarch64-unknown-linux-gnu
bin="${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/examples/insn_count"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

count() { # kernel reps -> instructions executed between the markers
    local markers
    markers=$(qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max -one-insn-per-tb -d exec,nochain -D "$log" \
        "$bin" "$1" "$2" 2>&1 >/dev/null | sed -n 's/^markers //p')
    awk -v b="${markers% *}" -v e="${markers#* }" '
        BEGIN { b = sprintf("%016s", b); e = sprintf("%016s", e); gsub(/ /, "0", b); gsub(/ /, "0", e) }
        /^Trace/ { split($4, f, "/"); pc = f[2]
                   if (pc == b) on = 1
                   else if (pc == e) { print n; exit }
                   else if (on) n++ }' "$log"
}

echo "| kernel | level | m | instructions per call | per MAC |"
echo "|---|---|---|---:|---:|"
row() { # kernel level m macs
    local per
    per=$(($(count "$1" 4) / 4))
    printf '| %s | %s | %s | %d | %s |\n' "$1" "$2" "$3" "$per" "$(awk -v p="$per" -v m="$4" 'BEGIN { printf "%.3f", p / m }')"
}
for m in 1 4; do
    macs=$((64 * 256 * m))
    row "scalar_f32_m$m" scalar "$m" "$macs"
    row "f32_m$m" neon "$m" "$macs"
    row "f16_m$m" neon "$m" "$macs"
    row "bf16_m$m" neon "$m" "$macs"
    row "q4_m$m" neon "$m" "$macs"
    row "scalar_q8_m$m" scalar "$m" "$macs"
    row "q8_m$m" "neon (f32 FMA)" "$m" "$macs"
    row "q8split_neon_m$m" "int8 split, smull/sadalp" "$m" "$macs"
    row "q8split_sdot_m$m" "dotprod (SDOT)" "$m" "$macs"
    row "q8split_smmla_m$m" "i8mm (SMMLA)" "$m" "$macs"
done
row split "int8 split (per input row)" 1 256
row scalar_bag_q8 scalar 1 256
row bag_q8 neon 1 256
