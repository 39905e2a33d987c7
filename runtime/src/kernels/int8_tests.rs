//! Tests of the int8 path of q8 linears: the reference against a hand-worked example and
//! an independent re-implementation of its definition, every level's int8 kernel against
//! the reference bit for bit (hostile codes, zero and non-finite rows, every tail), and
//! the stated accuracy budget against an f64 evaluation of the exact path.

#![allow(clippy::unwrap_used)]

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::int8::{self, INT8_MAX_K, INT8_MIN_K};
use super::{LinearDispatch, LinearKernel, Q8Math, SCALAR, WeightData, WeightMatrix, available};
use crate::graph::Activation;
use crate::view::{MatMut, MatRef};

/// Every int8 kernel this CPU runs: each table's, and the x86-64 ones directly (the
/// AVX-512 kernels may not be in a table yet).
fn int8_kernels() -> Vec<(String, &'static dyn LinearKernel)> {
    let mut v: Vec<(String, &'static dyn LinearKernel)> = Vec::new();
    for t in available() {
        if let Some(k) = t.int8 {
            v.push((t.level.to_string(), k));
        }
    }
    #[cfg(target_arch = "x86_64")]
    for (name, k) in [
        ("x86 avx2", &super::x86_64::int8::AVX2),
        ("x86 avx512bw", &super::x86_64::int8::AVX512),
        ("x86 avx512-vnni", &super::x86_64::int8::AVX512_VNNI),
    ] {
        if k.available() {
            v.push((name.into(), k));
        }
    }
    v
}

fn q8<'a>(codes: &'a [i8], scales: &'a [f32], cols: usize) -> WeightMatrix<'a> {
    WeightMatrix { data: WeightData::Q8 { codes, scales }, rows: scales.len(), cols }
}

fn run(
    k: &dyn LinearKernel,
    x: &[f32],
    m: usize,
    w: &WeightMatrix<'_>,
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> Vec<f32> {
    let mut y = vec![0.0f32; m * w.rows];
    // Garbage in scratch must not matter.
    let mut scratch = vec![f32::NAN; k.scratch_len(w, m).max(1)];
    k.linear(MatRef::dense(x, w.cols), w, bias, act, MatMut::dense(&mut y, w.rows), &mut scratch);
    y
}

fn run_acc(k: &dyn LinearKernel, x: &[f32], m: usize, w: &WeightMatrix<'_>, alpha: f32, y0: &[f32]) -> Vec<f32> {
    let mut y = y0.to_vec();
    let mut scratch = vec![f32::NAN; k.scratch_len(w, m).max(1)];
    k.linear_accumulate(MatRef::dense(x, w.cols), w, alpha, MatMut::dense(&mut y, w.rows), &mut scratch);
    y
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn hand_worked_example() {
    // amax = 127, so xs = 1 exactly: codes 127, −64 (−63.5, tie to even), 32 (31.75),
    // 0 (0.5, tie to even), −2 (−1.5, tie to even).
    let x = [127.0f32, -63.5, 31.75, 0.5, -1.5];
    let codes = [-128i8, 3, -1, 5, 7];
    let w = q8(&codes, &[0.5], 5);
    // Σ = 127·(−128) − 64·3 + 32·(−1) + 0·5 − 2·7 = −16494; y = −16494 · 0.5 + 1 = −8246.
    for (name, k) in int8_kernels() {
        assert_eq!(run(k, &x, 1, &w, Some(&[1.0]), None), [-8246.0], "{name}");
        assert_eq!(run(k, &x, 1, &w, Some(&[1.0]), Some(Activation::Relu)), [0.0], "{name}");
        assert_eq!(run_acc(k, &x, 1, &w, 2.0, &[10.0]), [10.0 + 2.0 * -8247.0], "{name}");
    }
}

/// Steps 1–4 of `kernels::int8`, written again independently: `rintf`, i64 sums.
fn definition(x: &[f32], codes: &[i8], ws: f32, bias: f32) -> Option<f32> {
    if x.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let xs = amax / 127.0;
    let q: Vec<i64> =
        x.iter().map(|&v| if xs == 0.0 { 0 } else { libm::rintf((v / xs).clamp(-127.0, 127.0)) as i64 }).collect();
    let sum: i64 = q.iter().zip(codes).map(|(&a, &b)| a * b as i64).sum();
    assert!(sum.unsigned_abs() < 1 << 31);
    Some(sum as i32 as f32 * (xs * ws) + bias)
}

/// A batch case: rows of `x` (some zero, huge, tiny or non-finite), q8 codes over the
/// whole i8 range (−128 included), scales (some 0), bias.
type Case = (usize, usize, usize, Vec<f32>, Vec<i8>, Vec<f32>, Vec<f32>);

fn case() -> impl Strategy<Value = Case> {
    let k = prop_oneof![
        Just(1usize),
        prop::sample::select(vec![2usize, 7, 31, 32, 33, 63, 64, 65, 95, 127, 128, 129, 200, 257]),
        1usize..300,
    ];
    (1usize..10, 1usize..14, k).prop_flat_map(|(m, n, k)| {
        let row = (0u8..8, prop::collection::vec(-2.0f32..2.0, k)).prop_map(|(kind, mut r)| {
            let mid = r.len() / 2;
            match kind {
                0 => r.fill(0.0),
                1 => r.iter_mut().for_each(|v| *v *= 1e30),
                2 => r.iter_mut().for_each(|v| *v *= 1e-41),
                3 => r[mid] = f32::NAN,
                4 => r[0] = f32::INFINITY,
                _ => {}
            }
            r
        });
        (
            Just(m),
            Just(n),
            Just(k),
            prop::collection::vec(row, m).prop_map(|rows| rows.concat()),
            prop::collection::vec(any::<i8>(), n * k),
            prop::collection::vec(prop_oneof![Just(0.0f32), 1e-4f32..0.1], n),
            prop::collection::vec(-1.0f32..1.0, n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn reference_is_the_definition((m, n, k, x, codes, scales, bias) in case()) {
        let w = q8(&codes, &scales, k);
        let got = run(&int8::Reference, &x, m, &w, Some(&bias), None);
        let exact = run(SCALAR.linear, &x, m, &w, Some(&bias), None);
        for r in 0..m {
            for o in 0..n {
                let (g, i) = (got[r * n + o], r * n + o);
                match definition(&x[r * k..(r + 1) * k], &codes[o * k..(o + 1) * k], scales[o], bias[o]) {
                    Some(want) => prop_assert_eq!(g.to_bits(), want.to_bits(), "[{},{}] {} vs {}", r, o, g, want),
                    // A non-finite row is the exact path's result, never finite garbage.
                    None => prop_assert_eq!(g.to_bits(), exact[i].to_bits()),
                }
            }
        }
    }

    #[test]
    fn every_int8_kernel_matches_the_reference_bit_for_bit(
        (m, n, k, x, codes, scales, bias) in case(),
        act in prop::option::of(prop::sample::select(Activation::ALL.to_vec())),
        alpha in -2.0f32..2.0,
        split in 1usize..14,
    ) {
        let w = q8(&codes, &scales, k);
        let want = run(&int8::Reference, &x, m, &w, Some(&bias), act);
        let want_acc = run_acc(&int8::Reference, &x, m, &w, alpha, &bias.repeat(m));
        for (name, kern) in int8_kernels() {
            let got = run(kern, &x, m, &w, Some(&bias), act);
            prop_assert_eq!(bits(&got), bits(&want), "{} m{} n{} k{}", name, m, n, k);
            let acc = run_acc(kern, &x, m, &w, alpha, &bias.repeat(m));
            prop_assert_eq!(bits(&acc), bits(&want_acc), "{} accumulate m{} n{} k{}", name, m, n, k);
            // Rows alone, and weight rows split, give the same bits.
            for r in 0..m {
                let alone = run(kern, &x[r * k..(r + 1) * k], 1, &w, Some(&bias), act);
                prop_assert_eq!(bits(&alone), bits(&got[r * n..(r + 1) * n]), "{} row {} alone", name, r);
            }
            let s = split.min(n);
            let left = run(kern, &x, m, &q8(&codes[..s * k], &scales[..s], k), Some(&bias[..s]), act);
            for r in 0..m {
                prop_assert_eq!(bits(&left[r * s..(r + 1) * s]), bits(&got[r * n..r * n + s]), "{} split", name);
            }
        }
    }

    /// The budget of the README: `|y_int8 − y_exact| ≤ ws · (xs/2) · (1 + 2⁻²⁰) · Σ|wq|`
    /// plus the f32 rounding of the epilogue, against the exact path in f64.
    #[test]
    fn int8_stays_within_its_budget((m, n, k, x, codes, scales, bias) in case()) {
        let w = q8(&codes, &scales, k);
        let got = run(&int8::Reference, &x, m, &w, Some(&bias), None);
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            if xr.iter().any(|v| !v.is_finite()) {
                continue;
            }
            for o in 0..n {
                let wr = &codes[o * k..(o + 1) * k];
                let g = got[r * n + o] as f64;
                prop_assert!(within_budget(xr, wr, scales[o], bias[o], g), "[{},{}]", r, o);
            }
        }
    }
}

/// Whether `got` is within the stated budget of the exact result (computed in f64).
fn within_budget(x: &[f32], w: &[i8], ws: f32, bias: f32, got: f64) -> bool {
    let exact: f64 = x.iter().zip(w).map(|(&a, &b)| a as f64 * (b as f64 * ws as f64)).sum::<f64>() + bias as f64;
    let (bound, mag) = budget(x, w, ws, bias);
    (got - exact).abs() <= bound + 4.0 * f32::EPSILON as f64 * mag + f32::MIN_POSITIVE as f64
}

/// (The quantization budget, the magnitude the f32 epilogue rounds) for one output.
fn budget(x: &[f32], w: &[i8], ws: f32, bias: f32) -> (f64, f64) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let xs = amax / 127.0;
    let l1: f64 = w.iter().map(|&c| (c as f64).abs()).sum();
    let mag: f64 = x.iter().zip(w).map(|(&a, &b)| (a as f64 * b as f64 * ws as f64).abs()).sum::<f64>() * 2.0;
    (ws as f64 * xs / 2.0 * (1.0 + 2f64.powi(-20)) * l1, mag + (bias as f64).abs())
}

/// Activations that all sit just below a rounding midpoint, against weights of one sign:
/// every activation error adds up. The budget holds and is nearly reached (it is tight,
/// not decorative).
#[test]
fn adversarial_rows_reach_but_do_not_exceed_the_budget() {
    for k in [1usize, 33, 64, 1000, 4096] {
        let amax = 3.0f32;
        let xs = amax / 127.0;
        let mut x: Vec<f32> = (0..k).map(|i| ((i % 120) as f32 + 0.499) * xs).collect();
        x[0] = amax;
        let codes: Vec<i8> = (0..k).map(|i| if i == 0 { 0 } else { 127 - (i % 2) as i8 }).collect();
        let w = q8(&codes, &[0.01], k);
        for (name, kern) in int8_kernels() {
            let got = run(kern, &x, 1, &w, None, None)[0] as f64;
            assert!(within_budget(&x, &codes, 0.01, 0.0, got), "{name} k{k}");
            if k >= 33 {
                let exact: f64 = x.iter().zip(&codes).map(|(&a, &b)| a as f64 * b as f64 * 0.01).sum();
                let (bound, _) = budget(&x, &codes, 0.01, 0.0);
                assert!(
                    (got - exact).abs() >= 0.9 * bound,
                    "{name} k{k}: error {} of bound {bound}",
                    (got - exact).abs()
                );
            }
        }
    }
}

/// The longest rows the int8 path takes cannot overflow i32: all codes at ±127 × −128.
#[test]
fn longest_rows_do_not_overflow() {
    let k = INT8_MAX_K;
    let x = vec![-1.0f32; k];
    let codes = vec![-128i8; k];
    let w = q8(&codes, &[1.0], k);
    let want = 127.0 * 128.0 * k as f64 / 127.0;
    for (name, kern) in int8_kernels() {
        let got = run(kern, &x, 1, &w, None, None)[0] as f64;
        assert!((got - want).abs() <= want * 1e-6, "{name}: {got} vs {want}");
    }
}

#[test]
fn the_session_choice_depends_only_on_the_weight() {
    // Activations no int8 grid represents exactly: the int8 and exact results differ, so
    // which kernel ran shows in the output bits.
    let x = |k: usize| (0..k).map(|i| 1.0 / (i as f32 + 1.5)).collect::<Vec<f32>>();
    let same = |a: &dyn LinearKernel, b: &dyn LinearKernel, w: &WeightMatrix<'_>| {
        bits(&run(a, &x(2 * w.cols), 2, w, None, None)) == bits(&run(b, &x(2 * w.cols), 2, w, None, None))
    };
    let codes: Vec<i8> = (0..2 * (INT8_MAX_K + 1)).map(|i| (i % 255) as i8).collect();
    let scales = [0.01f32; 2];
    let w = |k: usize| q8(&codes[..2 * k], &scales, k);
    let (short, shortest_int8, long) = (w(INT8_MIN_K - 1), w(INT8_MIN_K), w(INT8_MAX_K + 1));
    for t in available() {
        let int8 = t.int8.unwrap_or(t.linear);
        assert!(!same(&int8::Reference, t.linear, &shortest_int8), "{}: int8 and exact differ", t.level);
        assert!(same(t.linear_for(&shortest_int8, Q8Math::Int8), int8, &shortest_int8), "{}", t.level);
        assert!(same(t.linear_for(&shortest_int8, Q8Math::Exact), t.linear, &shortest_int8), "{}", t.level);
        assert!(same(t.linear_for(&short, Q8Math::Int8), t.linear, &short), "{}", t.level);
        assert!(same(t.linear_for(&long, Q8Math::Int8), t.linear, &long), "{}", t.level);
        // The dispatcher's scratch fits both kernels.
        let d = LinearDispatch { kernels: t, math: Q8Math::Int8 };
        for rows in [1, 3, 4, 300] {
            let w = &shortest_int8;
            assert!(d.scratch_len(w, rows) >= t.linear.scratch_len(w, rows));
            assert!(d.scratch_len(w, rows) >= int8.scratch_len(w, rows));
        }
    }
}

#[test]
fn names_parse() {
    for m in [Q8Math::Int8, Q8Math::Exact] {
        assert_eq!(Q8Math::parse(m.as_str()), Some(m));
    }
    assert_eq!(Q8Math::parse("fast"), None);
    assert_eq!(Q8Math::default(), Q8Math::Int8);
}

// ---------------------------------------------------------------------------------------
// q4 weights

/// Q4_0 rows built from raw parts: `nb` blocks per row, f16 scale bits `d[o·nb + b]`,
/// nibble bytes `nib[(o·nb + b)·16..][..16]` (garbage beyond `k` included).
fn q4_bytes(d: &[u16], nib: &[u8]) -> Vec<u8> {
    d.iter()
        .zip(nib.chunks_exact(16))
        .flat_map(|(&d, n)| d.to_le_bytes().into_iter().chain(n.iter().copied()))
        .collect()
}

fn q4(bytes: &[u8], rows: usize, cols: usize) -> WeightMatrix<'_> {
    WeightMatrix { data: WeightData::Q4(bytes), rows, cols }
}

/// `(c − 8, d)` of element `k` of a Q4_0 row, decoded independently of `quant`: byte
/// `j < 16` of a block holds element `j` in its low nibble and `j + 16` in its high one.
fn q4_element(row: &[u8], k: usize) -> (i64, f32) {
    let block = &row[(k / 32) * 18..(k / 32 + 1) * 18];
    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
    let (j, hi) = (k % 32 % 16, k % 32 >= 16);
    let c = if hi { block[2 + j] >> 4 } else { block[2 + j] & 15 };
    (c as i64 - 8, d)
}

/// The q4 definition of `kernels::int8` written again: `rintf` codes, i64 block sums,
/// `acc = acc + s · d` in f32 per block in order, then `acc · xs + bias`.
fn definition_q4(x: &[f32], row: &[u8], bias: f32) -> Option<f32> {
    if x.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let k = x.len();
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let xs = amax / 127.0;
    let q = |v: f32| if xs == 0.0 { 0 } else { libm::rintf((v / xs).clamp(-127.0, 127.0)) as i64 };
    let mut acc = 0.0f32;
    for b in 0..k.div_ceil(32) {
        let s: i64 = (b * 32..k.min(b * 32 + 32)).map(|i| q(x[i]) * q4_element(row, i).0).sum();
        let d = q4_element(row, b * 32).1;
        acc += s as f32 * d;
    }
    Some(acc * xs + bias)
}

/// A q4 batch case: activation rows as in [`case`], Q4_0 rows with scales over the f16
/// range (0, tiny, huge, negative) and arbitrary nibbles (padding nibbles too), bias.
type Q4Case = (usize, usize, usize, Vec<f32>, Vec<u8>, Vec<f32>);

fn q4_case() -> impl Strategy<Value = Q4Case> {
    let k = prop_oneof![
        Just(1usize),
        prop::sample::select(vec![2usize, 31, 32, 33, 63, 64, 65, 95, 96, 97, 127, 128, 129, 160, 200, 257]),
        1usize..400,
    ];
    (1usize..7, 1usize..40, k).prop_flat_map(|(m, n, k)| {
        let nb = k.div_ceil(32);
        let row = (0u8..8, prop::collection::vec(-2.0f32..2.0, k)).prop_map(|(kind, mut r)| {
            let mid = r.len() / 2;
            match kind {
                0 => r.fill(0.0),
                1 => r.iter_mut().for_each(|v| *v *= 1e30),
                2 => r.iter_mut().for_each(|v| *v *= 1e-41),
                3 => r[mid] = f32::NAN,
                4 => r[0] = f32::INFINITY,
                _ => {}
            }
            r
        });
        let scale = prop_oneof![Just(0.0f32), -0.05f32..0.05, -1e-6f32..1e-6, -60000.0f32..60000.0]
            .prop_map(|v| half::f16::from_f32(v).to_bits());
        (
            Just(m),
            Just(n),
            Just(k),
            prop::collection::vec(row, m).prop_map(|rows| rows.concat()),
            (prop::collection::vec(scale, n * nb), prop::collection::vec(any::<u8>(), n * nb * 16))
                .prop_map(|(d, nib)| q4_bytes(&d, &nib)),
            prop::collection::vec(-1.0f32..1.0, n),
        )
    })
}

#[test]
fn q4_hand_worked_example() {
    // amax = 127, xs = 1: codes 127, −64 (tie to even), 32, 0 (tie to even), −2, then
    // 0 for elements 5..33 except x[32] = 10. Block 0 (d = 0.5): nibbles c = 15, 0, 7, 9,
    // 12 → c − 8 = 7, −8, −1, 1, 4: s0 = 889 + 512 − 32 + 0 − 8 = 1361. Block 1 (d = −2,
    // a K tail of 1 element; its other 31 nibbles are garbage 0xff): c = 3 → −5, s1 = −50.
    // acc = 1361 · 0.5 + (−50 · −2) = 780.5; y = 780.5 · 1 + 1.
    let mut x = vec![0.0f32; 33];
    x[..5].copy_from_slice(&[127.0, -63.5, 31.75, 0.5, -1.5]);
    x[32] = 10.0;
    let mut nib0 = [8u8; 16];
    nib0[..5].copy_from_slice(&[15, 0, 7, 9, 12]);
    nib0.iter_mut().for_each(|b| *b |= 8 << 4);
    let mut nib1 = [0xffu8; 16];
    nib1[0] = 0xf3;
    let d = [half::f16::from_f32(0.5).to_bits(), half::f16::from_f32(-2.0).to_bits()];
    let bytes = q4_bytes(&d, &[nib0, nib1].concat());
    let w = q4(&bytes, 1, 33);
    let mut kernels = int8_kernels();
    kernels.push(("reference".into(), &int8::Reference));
    for (name, k) in kernels {
        assert_eq!(run(k, &x, 1, &w, Some(&[1.0]), None), [781.5], "{name}");
        assert_eq!(run_acc(k, &x, 1, &w, 2.0, &[10.0]), [10.0 + 2.0 * 780.5], "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn q4_reference_is_the_definition((m, n, k, x, bytes, bias) in q4_case()) {
        let w = q4(&bytes, n, k);
        let rb = k.div_ceil(32) * 18;
        let got = run(&int8::Reference, &x, m, &w, Some(&bias), None);
        let exact = run(SCALAR.linear, &x, m, &w, Some(&bias), None);
        for r in 0..m {
            for o in 0..n {
                let (g, i) = (got[r * n + o], r * n + o);
                match definition_q4(&x[r * k..(r + 1) * k], &bytes[o * rb..(o + 1) * rb], bias[o]) {
                    Some(want) => prop_assert_eq!(g.to_bits(), want.to_bits(), "[{},{}] {} vs {}", r, o, g, want),
                    None => prop_assert_eq!(g.to_bits(), exact[i].to_bits()),
                }
            }
        }
    }

    #[test]
    fn every_int8_kernel_matches_the_q4_reference_bit_for_bit(
        (m, n, k, x, bytes, bias) in q4_case(),
        act in prop::option::of(prop::sample::select(Activation::ALL.to_vec())),
        alpha in -2.0f32..2.0,
        split in 1usize..40,
    ) {
        let w = q4(&bytes, n, k);
        let rb = k.div_ceil(32) * 18;
        let want = run(&int8::Reference, &x, m, &w, Some(&bias), act);
        let want_acc = run_acc(&int8::Reference, &x, m, &w, alpha, &bias.repeat(m));
        for (name, kern) in int8_kernels() {
            let got = run(kern, &x, m, &w, Some(&bias), act);
            prop_assert_eq!(bits(&got), bits(&want), "{} m{} n{} k{}", name, m, n, k);
            let acc = run_acc(kern, &x, m, &w, alpha, &bias.repeat(m));
            prop_assert_eq!(bits(&acc), bits(&want_acc), "{} accumulate m{} n{} k{}", name, m, n, k);
            for r in 0..m {
                let alone = run(kern, &x[r * k..(r + 1) * k], 1, &w, Some(&bias), act);
                prop_assert_eq!(bits(&alone), bits(&got[r * n..(r + 1) * n]), "{} row {} alone", name, r);
            }
            let s = split.min(n);
            let left = run(kern, &x, m, &q4(&bytes[..s * rb], s, k), Some(&bias[..s]), act);
            for r in 0..m {
                prop_assert_eq!(bits(&left[r * s..(r + 1) * s]), bits(&got[r * n..r * n + s]), "{} split", name);
            }
        }
    }

    /// The q4 budget of the README against the exact result in f64.
    #[test]
    fn q4_int8_stays_within_its_budget((m, n, k, x, bytes, bias) in q4_case()) {
        let w = q4(&bytes, n, k);
        let rb = k.div_ceil(32) * 18;
        let got = run(&int8::Reference, &x, m, &w, Some(&bias), None);
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            if xr.iter().any(|v| !v.is_finite()) {
                continue;
            }
            for o in 0..n {
                let g = got[r * n + o] as f64;
                let (err, bound) = q4_error(xr, &bytes[o * rb..(o + 1) * rb], bias[o], g);
                prop_assert!(err <= bound, "[{},{}] error {} > budget {}", r, o, err, bound);
            }
        }
    }
}

/// (|got − exact|, allowed) for one q4 output: the quantization budget
/// `(xs/2 · (1 + 2⁻¹⁵) + 2⁻¹⁴³) · Σ_b |d_b| · Σ_{k in b} |c_k − 8|` (the last term only
/// matters for subnormal `xs`) plus the f32 rounding of the block accumulation and the
/// epilogue, `(⌈K/32⌉ + 4) · 2⁻²³` of the magnitudes involved. Exact result in f64;
/// outputs beyond the f32 range (infinite in both paths) are not compared.
fn q4_error(x: &[f32], row: &[u8], bias: f32, got: f64) -> (f64, f64) {
    let k = x.len();
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let xs = amax / 127.0;
    let (mut exact, mut l1, mut mag) = (bias as f64, 0.0f64, 0.0f64);
    for (i, &v) in x.iter().enumerate() {
        let (c, d) = q4_element(row, i);
        exact += v as f64 * (c as f64 * d as f64);
        l1 += (c as f64 * d as f64).abs();
        mag += (v as f64 * c as f64 * d as f64).abs();
    }
    if !got.is_finite() && exact.abs().max(mag) > f32::MAX as f64 / 4.0 {
        return (0.0, 0.0);
    }
    let quant = (xs / 2.0 * (1.0 + 2f64.powi(-15)) + 2f64.powi(-143)) * l1;
    let rounding = (k.div_ceil(32) + 4) as f64 * 2f64.powi(-23) * (2.0 * mag + quant + (bias as f64).abs());
    ((got - exact).abs(), quant + rounding + f32::MIN_POSITIVE as f64)
}

/// Activations just below rounding midpoints against codes of one sign: the q4 budget is
/// nearly reached (tight), and never exceeded, at every level.
#[test]
fn q4_adversarial_rows_reach_but_do_not_exceed_the_budget() {
    for k in [33usize, 64, 1000, 4096] {
        let amax = 3.0f32;
        let xs = amax / 127.0;
        let mut x: Vec<f32> = (0..k).map(|i| ((i % 120) as f32 + 0.499) * xs).collect();
        x[0] = amax;
        let nb = k.div_ceil(32);
        // c = 15 (c − 8 = 7) everywhere except element 0 (c = 8), scales 0.01.
        let mut nib = vec![0xffu8; nb * 16];
        nib[0] = 0xf8;
        let bytes = q4_bytes(&vec![half::f16::from_f32(0.01).to_bits(); nb], &nib);
        let w = q4(&bytes, 1, k);
        let mut kernels = int8_kernels();
        kernels.push(("reference".into(), &int8::Reference));
        for (name, kern) in kernels {
            let got = run(kern, &x, 1, &w, None, None)[0] as f64;
            let (err, bound) = q4_error(&x, &bytes, 0.0, got);
            assert!(err <= bound, "{name} k{k}: {err} > {bound}");
            assert!(err >= 0.9 * bound, "{name} k{k}: error {err} of bound {bound}");
        }
    }
}

/// Long q4 rows with every product at its extreme: block sums stay exact.
#[test]
fn q4_long_rows_at_the_extremes() {
    let k = 1 << 14;
    let x = vec![-1.0f32; k];
    // c = 0 (c − 8 = −8) everywhere, d = 1: every block sum is 32 · 8 · 127.
    let bytes = q4_bytes(&vec![half::f16::from_f32(1.0).to_bits(); k / 32], &vec![0u8; k / 2]);
    let w = q4(&bytes, 1, k);
    for (name, kern) in int8_kernels() {
        assert_eq!(run(kern, &x, 1, &w, None, None), [8.0 * k as f32], "{name}");
    }
}

#[test]
fn the_session_sends_q4_to_int8_where_the_level_has_it() {
    let x = |k: usize| (0..k).map(|i| 1.0 / (i as f32 + 1.5)).collect::<Vec<f32>>();
    let same = |a: &dyn LinearKernel, b: &dyn LinearKernel, w: &WeightMatrix<'_>| {
        bits(&run(a, &x(2 * w.cols), 2, w, None, None)) == bits(&run(b, &x(2 * w.cols), 2, w, None, None))
    };
    let k = INT8_MIN_K + 1; // a K tail: the last block is padded
    let nb = k.div_ceil(32);
    let nib: Vec<u8> = (0..2 * nb * 16).map(|i| (i * 37 % 256) as u8).collect();
    let bytes = q4_bytes(&vec![half::f16::from_f32(0.01).to_bits(); 2 * nb], &nib);
    let w = q4(&bytes, 2, k);
    let short_bytes = q4_bytes(&[half::f16::from_f32(0.01).to_bits(); 2 * 3], &nib[..2 * 3 * 16]);
    let short = q4(&short_bytes, 2, INT8_MIN_K - 33);
    for t in available() {
        assert!(!same(&int8::Reference, t.linear, &w), "{}: int8 and exact differ", t.level);
        let want = if t.level.has_q4_int8() { t.int8.unwrap_or(t.linear) } else { t.linear };
        assert!(same(t.linear_for(&w, Q8Math::Int8), want, &w), "{}", t.level);
        assert!(same(t.linear_for(&w, Q8Math::Int8), &int8::Reference, &w) == t.level.has_q4_int8(), "{}", t.level);
        assert!(same(t.linear_for(&w, Q8Math::Exact), t.linear, &w), "{}", t.level);
        assert!(same(t.linear_for(&short, Q8Math::Int8), t.linear, &short), "{}", t.level);
        let d = LinearDispatch { kernels: t, math: Q8Math::Int8 };
        for rows in [1, 3, 4, 300] {
            assert!(d.scratch_len(&w, rows) >= t.linear.scratch_len(&w, rows));
            // Scratch covers the kernel the dispatch picks (the reference's wherever q4 is int8).
            if t.level.has_q4_int8() {
                assert!(d.scratch_len(&w, rows) >= int8::Reference.scratch_len(&w, rows), "{}", t.level);
            }
        }
    }
}
