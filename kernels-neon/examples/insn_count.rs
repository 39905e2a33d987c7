//! Runs one kernel `reps` times between two marker calls, for `scripts/neon-insn-count.sh`:
//! it prints the markers' addresses, and the script counts the instructions qemu executed
//! between them (process start-up varies by tens of thousands of instructions from run to
//! run, so differences of whole-process counts would drown the small kernels).
//!
//! `insn_count <kernel> <reps>`; kernels: `{f32,f16,bf16,q8,q4}_m{1,4}` (the NEON f32-FMA
//! paths), `q8split_{neon,sdot,smmla}_m{1,4}` (the int8 paths), `scalar_{f32,q8}_m{1,4}`
//! (graft's scalar reference algorithm: dequantize a row, then a sequential dot product),
//! `bag_q8` (one 256-column q8 row added into a bag), `split` (one 256-column activation row
//! split into int8 digits, the per-row cost of the `q8split_*` paths). Shapes: 64 outputs × 256 inputs.

/// Called right before the measured loop (its address delimits the count).
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
#[inline(never)]
fn marker_begin() {
    std::hint::black_box(());
}

/// Called right after the measured loop.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
#[inline(never)]
fn marker_end() {
    std::hint::black_box(1);
}

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn main() {
    use std::hint::black_box;

    use graft_kernels_neon::q8::{IntLevel, gemm_split, scratch_bytes};
    use graft_kernels_neon::split::split_into;
    use graft_kernels_neon::{Epilogue, Mat, MatMut, bag, linear};

    const N: usize = 64;
    const K: usize = 256;
    let args: Vec<String> = std::env::args().collect();
    let (Some(kernel), Some(reps)) = (args.get(1), args.get(2).and_then(|r| r.parse::<usize>().ok())) else {
        eprintln!("usage: insn_count <kernel> <reps>");
        std::process::exit(2);
    };
    let (name, m) = match kernel.rsplit_once("_m") {
        Some((n, m)) => (n, m.parse::<usize>().unwrap_or(1)),
        None => (kernel.as_str(), 1),
    };
    let x: Vec<f32> = (0..m * K).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
    let w: Vec<f32> = (0..N * K).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
    let codes: Vec<i8> = (0..N * K).map(|i| (i * 37 % 255) as i8).collect();
    let halves: Vec<u16> = (0..N * K).map(|i| 0x3c00 + (i % 512) as u16).collect();
    let q4: Vec<u8> = (0..N * K / 32 * 18).map(|i| if i % 18 == 1 { 0x2c } else { (i * 29 % 256) as u8 }).collect();
    let scales = vec![0.01f32; N];
    let mut y = vec![0.0f32; m * N];
    let mut scratch = vec![0i8; scratch_bytes(K)];
    let mut row = vec![0.0f32; K];
    let plain = Epilogue::default();
    let q8ep = Epilogue { scales: Some(&scales), ..Epilogue::default() };
    eprintln!("markers {:x} {:x}", marker_begin as fn() as usize, marker_end as fn() as usize);
    marker_begin();
    for _ in 0..reps {
        let xm = Mat::dense(black_box(&x), m, K);
        let ym = MatMut::dense(&mut y, m, N);
        match name {
            "f32" => linear::gemm_f32(xm, black_box(&w), N, &plain, ym),
            "f16" => linear::gemm_f16(xm, black_box(&halves), N, &plain, ym),
            "bf16" => linear::gemm_bf16(xm, black_box(&halves), N, &plain, ym),
            "q8" => linear::gemm_q8(xm, black_box(&codes), N, &q8ep, ym),
            "q4" => linear::gemm_q4(xm, black_box(&q4), N, &plain, ym),
            "q8split_neon" | "q8split_sdot" | "q8split_smmla" => {
                let level = match name {
                    "q8split_sdot" => IntLevel::Dotprod,
                    "q8split_smmla" => IntLevel::I8mm,
                    _ => IntLevel::Neon,
                };
                let ok = match level {
                    IntLevel::Neon => true,
                    IntLevel::Dotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
                    IntLevel::I8mm => std::arch::is_aarch64_feature_detected!("i8mm"),
                };
                assert!(ok, "{name}: the CPU lacks the instructions");
                // SAFETY: checked just above.
                unsafe { gemm_split(level, xm, black_box(&codes), N, &q8ep, ym, &mut scratch) }
            }
            // The scalar reference's algorithm (graft `kernels::scalar`): dequantize each
            // weight row once, then one sequential dot product per input row.
            "scalar_f32" | "scalar_q8" => {
                for o in 0..N {
                    if name == "scalar_q8" {
                        for (r, &c) in row.iter_mut().zip(&codes[o * K..(o + 1) * K]) {
                            *r = c as f32 * scales[o];
                        }
                    } else {
                        row.copy_from_slice(&w[o * K..(o + 1) * K]);
                    }
                    for i in 0..m {
                        let mut acc = 0.0f32;
                        for (a, b) in x[i * K..(i + 1) * K].iter().zip(black_box(&row)) {
                            acc += a * b;
                        }
                        y[i * N + o] = acc;
                    }
                }
            }
            "split" => {
                let (h, rest) = scratch.split_at_mut(K);
                let (md, lo) = rest.split_at_mut(K);
                black_box(split_into(black_box(&x[..K]), h, md, lo));
            }
            "bag_q8" => bag::add_q8(black_box(&codes[..K]), 0.01, &mut row),
            "scalar_bag_q8" => {
                for (r, &c) in row.iter_mut().zip(black_box(&codes[..K])) {
                    *r += c as f32 * 0.01;
                }
            }
            other => {
                eprintln!("unknown kernel {other}");
                std::process::exit(2);
            }
        }
        black_box(&mut y);
        black_box(&mut row);
    }
    marker_end();
}

#[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
fn main() {
    eprintln!("insn_count runs on aarch64 (under qemu-aarch64: scripts/neon-insn-count.sh)");
}
