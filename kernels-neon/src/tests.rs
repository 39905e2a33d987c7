//! Every kernel at every level the CPU runs against plain scalar references, on random
//! shapes whose lengths straddle the vector widths (tails of 1..15 columns, Q4_0 rows
//! ending mid-block, odd row and output counts for the 2 × 2 SMMLA tile).
//!
//! Under qemu, `-cpu max` runs all three int8 levels, `-cpu cortex-a76` the baseline and
//! SDOT, `-cpu cortex-a57` the baseline only; `GRAFT_NEON_EXPECT=<level>` makes
//! [`best_level_is_the_expected_one`] fail if the emulated CPU is not the one CI meant.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::vec;
use std::vec::Vec;

use half::{bf16, f16};
use proptest::prelude::*;

use crate::q8::{IntLevel, gemm_split, scratch_bytes};
use crate::split::{SPLIT_RANGE, reference_dot};
use crate::{Epilogue, Mat, MatMut, Q4_BLOCK, Q4_BLOCK_BYTES, act, bag, linear, lora};

fn levels() -> Vec<IntLevel> {
    let mut v = vec![IntLevel::Neon];
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        v.push(IntLevel::Dotprod);
    }
    if std::arch::is_aarch64_feature_detected!("i8mm") {
        v.push(IntLevel::I8mm);
    }
    v
}

#[test]
fn best_level_is_the_expected_one() {
    let best = *levels().last().unwrap();
    std::println!("int8 levels under test: {:?}", levels());
    if let Ok(want) = std::env::var("GRAFT_NEON_EXPECT") {
        let want = match want.as_str() {
            "neon" => IntLevel::Neon,
            "dotprod" => IntLevel::Dotprod,
            "i8mm" => IntLevel::I8mm,
            other => panic!("GRAFT_NEON_EXPECT={other}"),
        };
        assert_eq!(best, want);
    }
}

/// A weight matrix in one format plus its exact f32 dequantization.
struct W {
    format: usize,
    n: usize,
    k: usize,
    f32s: Vec<f32>,
    halves: Vec<u16>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    bytes: Vec<u8>,
    deq: Vec<f32>,
}

const FORMATS: [&str; 5] = ["f32", "f16", "bf16", "q8", "q4"];

fn q4_row(row: &[f32], out: &mut [u8]) {
    for (chunk, dst) in row.chunks(Q4_BLOCK).zip(out.chunks_exact_mut(Q4_BLOCK_BYTES)) {
        let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 8.0;
        dst[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let code = |j: usize| -> u8 { chunk.get(j).map_or(8, |v| ((v * id).round() + 8.0).clamp(0.0, 15.0) as u8) };
        for j in 0..16 {
            dst[2 + j] = code(j) | (code(j + 16) << 4);
        }
    }
}

impl W {
    fn new(format: usize, n: usize, k: usize, v: &[f32]) -> W {
        let mut w = W {
            format,
            n,
            k,
            f32s: vec![],
            halves: vec![],
            codes: vec![],
            scales: vec![],
            bytes: vec![],
            deq: vec![0.0; n * k],
        };
        let rb = k.div_ceil(Q4_BLOCK) * Q4_BLOCK_BYTES;
        for (o, row) in v.chunks(k).enumerate() {
            let deq = &mut w.deq[o * k..(o + 1) * k];
            match format {
                0 => {
                    w.f32s.extend_from_slice(row);
                    deq.copy_from_slice(row);
                }
                1 | 2 => {
                    for (d, &x) in deq.iter_mut().zip(row) {
                        let (bits, back) = if format == 1 {
                            let h = f16::from_f32(x);
                            (h.to_bits(), h.to_f32())
                        } else {
                            let h = bf16::from_f32(x);
                            (h.to_bits(), h.to_f32())
                        };
                        w.halves.push(bits);
                        *d = back;
                    }
                }
                3 => {
                    let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let s = amax / 127.0;
                    for (d, &x) in deq.iter_mut().zip(row) {
                        let c = if s == 0.0 { 0 } else { (x / s).round().clamp(-127.0, 127.0) as i8 };
                        w.codes.push(c);
                        *d = c as f32 * s;
                    }
                    w.scales.push(s);
                }
                _ => {
                    let mut b = vec![0u8; rb];
                    q4_row(row, &mut b);
                    for (c, d) in deq.iter_mut().enumerate() {
                        let block = &b[(c / 32) * 18..(c / 32) * 18 + 18];
                        let byte = block[2 + c % 32 % 16];
                        let code = if c % 32 < 16 { byte & 15 } else { byte >> 4 };
                        let scale = f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32();
                        *d = (code as i32 - 8) as f32 * scale;
                    }
                    w.bytes.extend(b);
                }
            }
        }
        w
    }

    fn gemm(&self, x: Mat<'_>, ep: &Epilogue<'_>, y: MatMut<'_>) {
        match self.format {
            0 => linear::gemm_f32(x, &self.f32s, self.n, ep, y),
            1 => linear::gemm_f16(x, &self.halves, self.n, ep, y),
            2 => linear::gemm_bf16(x, &self.halves, self.n, ep, y),
            3 => linear::gemm_q8(x, &self.codes, self.n, &Epilogue { scales: Some(&self.scales), ..*ep }, y),
            _ => linear::gemm_q4(x, &self.bytes, self.n, ep, y),
        }
    }
}

fn values(len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-2.0f32..2.0, len)
}

fn run(w: &W, x: &[f32], m: usize, ep: &Epilogue<'_>, y0: &[f32]) -> Vec<f32> {
    let mut y = y0.to_vec();
    w.gemm(Mat::dense(x, m, w.k), ep, MatMut::dense(&mut y, m, w.n));
    y
}

type Case = (usize, usize, usize, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn case() -> impl Strategy<Value = Case> {
    (1usize..9, 1usize..11, 1usize..90)
        .prop_flat_map(|(m, n, k)| (Just(m), Just(n), Just(k), values(m * k), values(n * k), values(n), values(m * n)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// GEMV/GEMM in every weight format, with bias + ReLU and with accumulation: within
    /// the rounding of a length-k reduction of the f32 reference, and every row equal
    /// bit for bit to the same row computed alone.
    #[test]
    fn linear_matches_reference((m, n, k, x, wv, bias, y0) in case(), f in 0usize..5, relu in any::<bool>(), alpha in prop::option::of(-2.0f32..2.0)) {
        let w = W::new(f, n, k, &wv);
        let ep = match alpha {
            Some(a) => Epilogue { accumulate: Some(a), ..Epilogue::default() },
            None => Epilogue { bias: Some(&bias), relu, ..Epilogue::default() },
        };
        let got = run(&w, &x, m, &ep, &y0);
        for r in 0..m {
            for o in 0..n {
                let xr = &x[r * k..(r + 1) * k];
                let wr = &w.deq[o * k..(o + 1) * k];
                let dot = xr.iter().zip(wr).fold(0.0f32, |s, (a, b)| s + a * b);
                let mag: f32 = xr.iter().zip(wr).map(|(a, b)| (a * b).abs()).sum::<f32>();
                let (want, tol) = match alpha {
                    Some(a) => (y0[r * n + o] + a * dot, 2e-6 * mag * a.abs() + 2e-6 * (1.0 + y0[r * n + o].abs())),
                    None => {
                        let v = dot + bias[o];
                        (if relu && v < 0.0 { 0.0 } else { v }, 2e-6 * (mag + bias[o].abs()) + 1e-6)
                    }
                };
                let g = got[r * n + o];
                prop_assert!((g - want).abs() <= tol, "{} m{m} n{n} k{k} [{r},{o}]: {g} vs {want}", FORMATS[f]);
            }
            let alone = run(&w, &x[r * k..(r + 1) * k], 1, &ep, &y0[r * n..(r + 1) * n]);
            prop_assert_eq!(bits(&alone), bits(&got[r * n..(r + 1) * n]), "{} row {} alone", FORMATS[f], r);
        }
    }

    /// The split-activation q8 path: every level returns exactly the portable reference
    /// (integer sums are exact), and the reference stays within the derived bound
    /// `Σ|c|·amax/(127·2¹⁷) + 2⁻²⁴|dot|` (+ the f64 evaluation's own rounding) of the exact
    /// dot product.
    #[test]
    fn q8_split_is_exact_at_every_level((m, n, k, x, wv, bias, _y0) in case(), spread in 0u32..20, relu in any::<bool>()) {
        // Widen the dynamic range so small activations next to a large one are covered.
        let x: Vec<f32> = x.iter().enumerate().map(|(i, v)| v * 2f32.powi(-((i as u32 * 7 % (spread + 1)) as i32))).collect();
        let w = W::new(3, n, k, &wv);
        let ep = Epilogue { scales: Some(&w.scales), bias: Some(&bias), relu, accumulate: None };
        let mut scratch = vec![0i8; scratch_bytes(k)];
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            let amax = xr.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
            for o in 0..n {
                let codes = &w.codes[o * k..(o + 1) * k];
                let d = reference_dot(xr, codes).unwrap();
                let exact: f64 = xr.iter().zip(codes).map(|(&a, &c)| a as f64 * c as f64).sum();
                let l1: f64 = codes.iter().map(|&c| (c as f64).abs()).sum();
                let bound = l1 * amax / (2.0 * SPLIT_RANGE) + (d as f64).abs() * 2f64.powi(-24) + 1e-30;
                prop_assert!((d as f64 - exact).abs() <= bound * (1.0 + 1e-9), "bound: {d} vs {exact} ({bound})");
            }
        }
        for level in levels() {
            let mut y = vec![f32::NAN; m * n];
            // SAFETY: `levels()` only lists what the CPU reports.
            unsafe { gemm_split(level, Mat::dense(&x, m, k), &w.codes, n, &ep, MatMut::dense(&mut y, m, n), &mut scratch) };
            for r in 0..m {
                for o in 0..n {
                    let d = reference_dot(&x[r * k..(r + 1) * k], &w.codes[o * k..(o + 1) * k]).unwrap();
                    let mut want = 0.0;
                    ep.finish(o, d, &mut want);
                    prop_assert_eq!(y[r * n + o].to_bits(), want.to_bits(), "{:?} m{} n{} k{} [{},{}]", level, m, n, k, r, o);
                }
            }
        }
    }

    /// Embedding bags: bit-identical to dequantize-then-add in every format.
    #[test]
    fn bags_match_reference_bit_for_bit((rows, cols, table) in (1usize..9, 1usize..75).prop_flat_map(|(r, c)| (Just(r), Just(c), values(r * c))), ids in prop::collection::vec(0usize..100, 0..6), f in 0usize..6, mean in any::<bool>()) {
        let ids: Vec<usize> = ids.into_iter().map(|i| i % rows).collect();
        let (format, w) = if f == 5 { (5, W::new(0, rows, cols, &table)) } else { (f, W::new(f, rows, cols, &table)) };
        // q8-rowwise rows: codes, then scale and bias.
        let rowwise: Vec<(Vec<u8>, f32, f32)> = table.chunks(cols).map(|row| {
            let (lo, hi) = row.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let scale = (hi - lo) / 255.0;
            let inv = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
            (row.iter().map(|&v| ((v - lo) * inv).round().clamp(0.0, 255.0) as u8).collect(), scale, lo)
        }).collect();
        let mut want = vec![0.0f32; cols];
        let mut got = vec![0.0f32; cols];
        let rb = cols.div_ceil(32) * 18;
        for &id in &ids {
            for c in 0..cols {
                want[c] += if format == 5 {
                    let (codes, s, b) = &rowwise[id];
                    codes[c] as f32 * s + b
                } else {
                    w.deq[id * cols + c]
                };
            }
            let r = id * cols..(id + 1) * cols;
            match format {
                0 => bag::add_f32(&w.f32s[r], &mut got),
                1 => bag::add_f16(&w.halves[r], &mut got),
                2 => bag::add_bf16(&w.halves[r], &mut got),
                3 => bag::add_q8(&w.codes[r], w.scales[id], &mut got),
                4 => bag::add_q4(&w.bytes[id * rb..(id + 1) * rb], &mut got),
                _ => bag::add_q8_rowwise(&rowwise[id].0, rowwise[id].1, rowwise[id].2, &mut got),
            }
            if let Some(&next) = ids.last() {
                bag::prefetch(w.deq[next * cols..].as_ptr().cast());
            }
        }
        if mean && !ids.is_empty() {
            want.iter_mut().for_each(|v| *v /= ids.len() as f32);
            bag::divide(&mut got, ids.len() as f32);
        }
        prop_assert_eq!(bits(&got), bits(&want), "format {}", format);
    }

    /// LoRA shrink then expand for a group of rows against the two-step reference.
    #[test]
    fn lora_steps_match_reference((m, k, r, o) in (1usize..7, 1usize..70, 1usize..17, 1usize..40), seed in any::<u32>(), alpha in -2.0f32..2.0) {
        let make = |len: usize, salt: u32| -> Vec<f32> { (0..len).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed ^ salt) % 2001) as f32 / 1000.0 - 1.0).collect() };
        let (x, a, b, y0) = (make(m * k, 1), make(r * k, 2), make(o * r, 3), make(m * o, 4));
        let mut t = vec![0.0f32; m * r];
        lora::shrink(Mat::dense(&x, m, k), &a, r, MatMut::dense(&mut t, m, r));
        let mut y = y0.clone();
        lora::expand(Mat::dense(&t, m, r), &b, o, alpha, MatMut::dense(&mut y, m, o));
        for i in 0..m {
            let tr: Vec<f32> = (0..r).map(|j| (0..k).fold(0.0f32, |s, c| s + x[i * k + c] * a[j * k + c])).collect();
            for j in 0..r {
                let mag: f32 = (0..k).map(|c| (x[i * k + c] * a[j * k + c]).abs()).sum();
                prop_assert!((t[i * r + j] - tr[j]).abs() <= 2e-6 * mag + 1e-6);
            }
            for q in 0..o {
                let d = (0..r).fold(0.0f32, |s, j| s + t[i * r + j] * b[q * r + j]);
                let mag: f32 = (0..r).map(|j| (t[i * r + j] * b[q * r + j]).abs()).sum();
                let want = y0[i * o + q] + alpha * d;
                prop_assert!((y[i * o + q] - want).abs() <= 2e-6 * mag * alpha.abs() + 2e-6 * (1.0 + y0[i * o + q].abs()));
            }
        }
    }

    /// Activations, add, mul, dot and layer norm.
    #[test]
    fn elementwise_matches_reference((a, b) in (0usize..40).prop_flat_map(|n| (values(n), values(n))), scale in 1.0f32..40.0) {
        let a: Vec<f32> = a.iter().map(|v| v * scale).collect();
        let mut g = a.clone();
        act::relu(&mut g);
        prop_assert_eq!(bits(&g), bits(&a.iter().map(|&v| if v < 0.0 { 0.0 } else { v }).collect::<Vec<_>>()));
        for silu in [false, true] {
            let mut g = a.clone();
            if silu { act::silu(&mut g) } else { act::sigmoid(&mut g) }
            for (&x, &y) in a.iter().zip(&g) {
                let s = 1.0 / (1.0 + (-x).exp());
                let e = if silu { x / (1.0 + (-x).exp()) } else { s };
                prop_assert!((y - e).abs() <= 2e-6 * e.abs() + 1e-7, "silu {silu}: {x}: {y} vs {e}");
            }
        }
        let mut y = vec![0.0; a.len()];
        act::add(&a, &b, &mut y);
        prop_assert_eq!(bits(&y), bits(&a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>()));
        act::mul(&a, &b, &mut y);
        prop_assert_eq!(bits(&y), bits(&a.iter().zip(&b).map(|(x, y)| x * y).collect::<Vec<_>>()));
        let d = linear::dot(&a, &b);
        let e = a.iter().zip(&b).fold(0.0f32, |s, (x, y)| s + x * y);
        let mag: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
        prop_assert!((d - e).abs() <= 2e-6 * mag + 1e-6);
        if !a.is_empty() {
            let n = a.len() as f32;
            let mean = a.iter().sum::<f32>() / n;
            let var = a.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + 1e-5).sqrt();
            let mut g = vec![0.0; a.len()];
            act::layer_norm(&a, &b, Some(&b), 1e-5, &mut g);
            for i in 0..a.len() {
                let e = (a[i] - mean) * inv * b[i] + b[i];
                prop_assert!((g[i] - e).abs() <= 1e-3 * (1.0 + e.abs()), "{} vs {}", g[i], e);
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn split_rows_with_nan_fall_back_and_leave_partners_exact() {
    let (m, n, k) = (3, 5, 37);
    let mut x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
    x[k + 3] = f32::NAN;
    let w = W::new(3, n, k, &(0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect::<Vec<_>>());
    let ep = Epilogue { scales: Some(&w.scales), ..Epilogue::default() };
    let mut scratch = vec![0i8; scratch_bytes(k)];
    for level in levels() {
        let mut y = vec![0.0f32; m * n];
        // SAFETY: `levels()` only lists what the CPU reports.
        unsafe { gemm_split(level, Mat::dense(&x, m, k), &w.codes, n, &ep, MatMut::dense(&mut y, m, n), &mut scratch) };
        assert!(y[n..2 * n].iter().all(|v| v.is_nan()), "{level:?}");
        for r in [0, 2] {
            for o in 0..n {
                let mut want = 0.0;
                ep.finish(o, reference_dot(&x[r * k..(r + 1) * k], &w.codes[o * k..(o + 1) * k]).unwrap(), &mut want);
                assert_eq!(y[r * n + o].to_bits(), want.to_bits(), "{level:?} [{r},{o}]");
            }
        }
    }
}

#[test]
fn tails_around_the_vector_widths() {
    for k in [1usize, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65] {
        for (m, n) in [(1, 1), (1, 5), (2, 3), (3, 4), (5, 7), (4, 9)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let wv: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
            for f in 0..5 {
                let w = W::new(f, n, k, &wv);
                let got = run(&w, &x, m, &Epilogue::default(), &vec![0.0; m * n]);
                for r in 0..m {
                    for o in 0..n {
                        let e = (0..k).fold(0.0f32, |s, c| s + x[r * k + c] * w.deq[o * k + c]);
                        assert!((got[r * n + o] - e).abs() <= 1e-5 * k as f32, "{} m{m} n{n} k{k}", FORMATS[f]);
                    }
                }
            }
            let w = W::new(3, n, k, &wv);
            let mut scratch = vec![0i8; scratch_bytes(k)];
            let mut first: Option<Vec<f32>> = None;
            for level in levels() {
                let mut y = vec![0.0f32; m * n];
                // SAFETY: `levels()` only lists what the CPU reports.
                unsafe {
                    gemm_split(
                        level,
                        Mat::dense(&x, m, k),
                        &w.codes,
                        n,
                        &Epilogue::default(),
                        MatMut::dense(&mut y, m, n),
                        &mut scratch,
                    )
                };
                match &first {
                    None => first = Some(y),
                    Some(f) => assert_eq!(bits(f), bits(&y), "{level:?} m{m} n{n} k{k}"),
                }
            }
        }
    }
}

proptest! {
    /// One-digit int8 sums (graft's int8 q8 path): SDOT and SMMLA give the exact integer
    /// dot products, −128 weight codes, odd rows and every column tail included.
    #[test]
    fn int8_sums_are_exact(
        (rows, n, k, pad) in (1usize..7, 1usize..11, 1usize..100, 0usize..20),
        seed in any::<u64>(),
    ) {
        let stride = k + pad;
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let x: Vec<i8> = (0..rows * stride).map(|_| (next() % 255) as i8).map(|v| v.max(-127)).collect();
        let codes: Vec<i8> = (0..n * k).map(|i| if i % 7 == 0 { -128 } else { next() as i8 }).collect();
        for level in levels().into_iter().filter(|&l| l != IntLevel::Neon) {
            let mut got = vec![i32::MIN; rows * n];
            // SAFETY: `levels` lists only what the CPU runs.
            unsafe { crate::int8::gemm_i8(level, &x, rows, stride, &codes, n, k, |m, o, v| got[m * n + o] = v) };
            for m in 0..rows {
                for o in 0..n {
                    let want: i64 = (0..k).map(|c| x[m * stride + c] as i64 * codes[o * k + c] as i64).sum();
                    prop_assert_eq!(got[m * n + o] as i64, want, "{:?} [{},{}] k{}", level, m, o, k);
                }
            }
        }
    }
}
