//! Criterion benches of the NEON kernels, for real ARM hardware (qemu cannot time them;
//! `scripts/neon-insn-count.sh` reports instruction counts instead):
//! `cargo bench -p graft-kernels-neon --bench neon`. On other architectures the bench
//! binary is empty.

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod arm {
    use std::hint::black_box;

    use criterion::{Criterion, Throughput};
    use graft_kernels_neon::q8::{IntLevel, gemm_split, scratch_bytes};
    use graft_kernels_neon::{Epilogue, Mat, MatMut, bag, exp, linear, matmul, reduce, softmax};

    const N: usize = 1024;
    const K: usize = 1024;

    pub fn benches(c: &mut Criterion) {
        let x: Vec<f32> = (0..4 * K).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let w: Vec<f32> = (0..N * K).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
        let codes: Vec<i8> = (0..N * K).map(|i| (i * 37 % 255) as i8).collect();
        let halves: Vec<u16> = (0..N * K).map(|i| 0x3c00 + (i % 512) as u16).collect();
        let scales = vec![0.01f32; N];
        let mut y = vec![0.0f32; 4 * N];
        let mut g = c.benchmark_group("gemv_1024x1024");
        g.throughput(Throughput::Elements((N * K) as u64));
        g.bench_function("f32", |b| {
            b.iter(|| {
                linear::gemm_f32(
                    Mat::dense(&x[..K], 1, K),
                    black_box(&w),
                    N,
                    &Epilogue::default(),
                    MatMut::dense(&mut y[..N], 1, N),
                )
            })
        });
        g.bench_function("f16", |b| {
            b.iter(|| {
                linear::gemm_f16(
                    Mat::dense(&x[..K], 1, K),
                    black_box(&halves),
                    N,
                    &Epilogue::default(),
                    MatMut::dense(&mut y[..N], 1, N),
                )
            })
        });
        let ep = Epilogue { scales: Some(&scales), ..Epilogue::default() };
        g.bench_function("q8_f32", |b| {
            b.iter(|| {
                linear::gemm_q8(Mat::dense(&x[..K], 1, K), black_box(&codes), N, &ep, MatMut::dense(&mut y[..N], 1, N))
            })
        });
        let mut scratch = vec![0i8; scratch_bytes(K)];
        let mut levels = vec![("q8_split_neon", IntLevel::Neon)];
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            levels.push(("q8_split_sdot", IntLevel::Dotprod));
        }
        if std::arch::is_aarch64_feature_detected!("i8mm") {
            levels.push(("q8_split_smmla", IntLevel::I8mm));
        }
        for (name, level) in levels {
            for rows in [1usize, 4] {
                g.bench_function(format!("{name}_m{rows}"), |b| {
                    b.iter(|| {
                        // SAFETY: the level was detected above.
                        unsafe {
                            gemm_split(
                                level,
                                Mat::dense(&x[..rows * K], rows, K),
                                black_box(&codes),
                                N,
                                &ep,
                                MatMut::dense(&mut y[..rows * N], rows, N),
                                &mut scratch,
                            )
                        }
                    })
                });
            }
        }
        g.finish();
        let mut acc = vec![0.0f32; K];
        c.bench_function("bag_q8_row_1024", |b| b.iter(|| bag::add_q8(black_box(&codes[..K]), 0.01, &mut acc)));

        // Tensor kernels over one 1024-value lane, and a 64 × 64 · 64 × 64 value matmul.
        let lane: Vec<f32> = x[..K].iter().map(|v| v * 4.0).collect();
        let mut out = vec![0.0f32; K];
        let mut g = c.benchmark_group("tensor_1024");
        g.throughput(Throughput::Elements(K as u64));
        g.bench_function("exp", |b| b.iter(|| exp::exp(black_box(&lane), &mut out)));
        g.bench_function("softmax", |b| {
            b.iter(|| {
                out.copy_from_slice(&lane);
                softmax::softmax(black_box(&mut out))
            })
        });
        g.bench_function("log_softmax", |b| {
            b.iter(|| {
                out.copy_from_slice(&lane);
                softmax::log_softmax(black_box(&mut out))
            })
        });
        g.bench_function("sum", |b| b.iter(|| reduce::sum(black_box(&lane))));
        g.bench_function("max", |b| b.iter(|| reduce::max(black_box(&lane))));
        g.finish();
        let d = 64;
        let mut prod = vec![0.0f32; d * d];
        let mut g = c.benchmark_group("matmul_64x64x64");
        g.throughput(Throughput::Elements((d * d * d) as u64));
        g.bench_function("f32", |b| {
            b.iter(|| matmul::matmul(black_box(&w[..d * d]), &w[d * d..2 * d * d], &mut prod, d, d, d))
        });
        g.finish();
    }
}

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
criterion::criterion_group!(benches, arm::benches);
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
criterion::criterion_main!(benches);

#[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
fn main() {}
