//! The tensor kernels ([`exp`], [`softmax`], [`reduce`], [`matmul`]) against plain scalar
//! loops evaluated in f64, on random lengths that straddle the 4- and 16-wide blocks.
//!
//! Tolerances (`u = 2⁻²⁴`, the f32 unit roundoff), each the bound stated in the kernel's
//! module docs:
//! - `exp`: relative `4u` (2 ulp) over the whole range, plus `2⁻¹⁴⁹` absolute where the
//!   result is subnormal; `+∞` exactly where `e^x` exceeds `f32::MAX`;
//! - `ln`: relative `2u` (1 ulp) over positive normal and subnormal inputs;
//! - softmax: relative `(n/4 + 16) · u` against `exp(fl(x − max)) / Σ` in f64;
//!   log-softmax: that plus `4u · (|x| + |max + ln Σ|)` absolute; log-sum-exp: the
//!   same with `x = 0`;
//! - sum: `(n/16 + 10) · u · Σ|x|`; max/min: exact (`==`), NaN if any NaN;
//! - matmul: `2k · u · Σ_p |a[i, p] · b[p, j]|` per output.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use crate::{exp, matmul, reduce, softmax};

const U: f64 = 1.0 / 16_777_216.0;

fn values(len: usize, lo: f32, hi: f32) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(lo..hi, len)
}

fn check_exp(x: f32, got: f32) -> Result<(), TestCaseError> {
    let want = (x as f64).exp();
    if want > f32::MAX as f64 * (1.0 + U) {
        prop_assert_eq!(got, f32::INFINITY, "exp({}) should overflow", x);
    } else {
        let tol = 4.0 * U * want + 2f64.powi(-149);
        prop_assert!((got as f64 - want).abs() <= tol, "exp({x}) = {got}, want {want}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn exp_matches_f64_over_the_whole_range(x in (0usize..70).prop_flat_map(|n| values(n, -105.0, 90.0))) {
        let mut y = vec![f32::NAN; x.len()];
        exp::exp(&x, &mut y);
        for (&v, &e) in x.iter().zip(&y) {
            check_exp(v, e)?;
        }
        let mut z = x.clone();
        exp::exp_in_place(&mut z);
        prop_assert_eq!(bits(&z), bits(&y));
    }

    #[test]
    fn exp_matches_f64_on_ordinary_inputs(x in (0usize..70).prop_flat_map(|n| values(n, -10.0, 10.0))) {
        let mut y = vec![f32::NAN; x.len()];
        exp::exp(&x, &mut y);
        for (&v, &e) in x.iter().zip(&y) {
            check_exp(v, e)?;
        }
    }

    #[test]
    fn ln_matches_f64(mant in 1.0f32..2.0, e in -149i32..128) {
        let x = mant * 2f32.powi(e);
        prop_assume!(x > 0.0 && x.is_finite());
        let want = (x as f64).ln();
        let got = exp::ln(x) as f64;
        prop_assert!((got - want).abs() <= 2.0 * U * want.abs() + 1e-30, "ln({x}) = {got}, want {want}");
    }

    #[test]
    fn softmax_matches_f64(x in (0usize..300).prop_flat_map(|n| values(n, -1.0, 1.0)), scale in 0.1f32..60.0) {
        let x: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let n = x.len();
        let mut got = x.clone();
        softmax::softmax(&mut got);
        let mut got_log = x.clone();
        softmax::log_softmax(&mut got_log);
        if n == 0 {
            prop_assert!(got.is_empty() && got_log.is_empty());
            prop_assert_eq!(softmax::log_sum_exp(&x), f32::NEG_INFINITY);
            return Ok(());
        }
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // The kernel's own input rounding, `fl(x − max)`, is part of the problem, not of the
        // error: the reference starts from the same differences.
        let d: Vec<f64> = x.iter().map(|&v| (v - max) as f64).collect();
        let sum: f64 = d.iter().map(|v| v.exp()).sum();
        let rel = (n as f64 / 4.0 + 16.0) * U;
        for i in 0..n {
            let want = d[i].exp() / sum;
            prop_assert!((got[i] as f64 - want).abs() <= rel * want + 1e-44, "softmax[{i}] = {} want {want}", got[i]);
            let want_log = d[i] - sum.ln();
            let shift = max as f64 + sum.ln();
            let tol = rel + 4.0 * U * ((x[i] as f64).abs() + shift.abs());
            prop_assert!((got_log[i] as f64 - want_log).abs() <= tol, "log_softmax[{i}] = {} want {want_log}", got_log[i]);
        }
        let lse = max as f64 + sum.ln();
        let got_lse = softmax::log_sum_exp(&x) as f64;
        prop_assert!((got_lse - lse).abs() <= rel + 4.0 * U * lse.abs(), "log_sum_exp = {got_lse} want {lse}");
        let total: f64 = got.iter().map(|&v| v as f64).sum();
        prop_assert!((total - 1.0).abs() <= rel * 2.0);
    }

    #[test]
    fn reductions_match_f64(x in (0usize..300).prop_flat_map(|n| values(n, -100.0, 100.0))) {
        let n = x.len();
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        let abs: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
        let got = reduce::sum(&x) as f64;
        prop_assert!((got - want).abs() <= (n as f64 / 16.0 + 10.0) * U * abs, "sum {got} want {want}");
        prop_assert_eq!(reduce::max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        prop_assert_eq!(reduce::min(&x), x.iter().copied().fold(f32::INFINITY, f32::min));
    }

    #[test]
    fn max_and_min_propagate_nan(x in (1usize..80).prop_flat_map(|n| values(n, -5.0, 5.0)), at in any::<prop::sample::Index>()) {
        let mut x = x;
        let i = at.index(x.len());
        x[i] = f32::NAN;
        prop_assert!(reduce::max(&x).is_nan(), "NaN at {i} of {}", x.len());
        prop_assert!(reduce::min(&x).is_nan(), "NaN at {i} of {}", x.len());
        prop_assert!(reduce::sum(&x).is_nan());
        let mut s = x.clone();
        softmax::softmax(&mut s);
        prop_assert!(s.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn matmul_matches_f64(
        (m, k, n) in (1usize..6, 0usize..40, 0usize..70),
        seed in any::<u32>(),
    ) {
        let mk = |len: usize, salt: u32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed ^ salt) as f32 / u32::MAX as f32 * 4.0 - 2.0)
                .collect()
        };
        let (a, b) = (mk(m * k, 0x9e37), mk(k * n, 0x79b9));
        let mut c = vec![f32::NAN; m * n];
        matmul::matmul(&a, &b, &mut c, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
                let mag: f64 = (0..k).map(|p| (a[i * k + p] as f64 * b[p * n + j] as f64).abs()).sum();
                let got = c[i * n + j] as f64;
                prop_assert!((got - want).abs() <= 2.0 * k as f64 * U * mag, "c[{i},{j}] = {got} want {want} (m{m} k{k} n{n})");
            }
        }
        // A row's result does not depend on the other rows.
        if m > 1 {
            let mut one = vec![0.0f32; n];
            matmul::matmul(&a[k..2 * k], &b, &mut one, 1, k, n);
            prop_assert_eq!(bits(&one), bits(&c[n..2 * n]));
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn exp_special_values() {
    let x = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        88.72,
        88.723,
        88.75,
        89.0,
        -87.3,
        -100.0,
        -103.9,
        -104.0,
        -200.0,
    ];
    let mut y = [0.0f32; 14];
    exp::exp(&x, &mut y);
    assert!(y[0].is_nan());
    assert_eq!(y[1], f32::INFINITY);
    assert_eq!(y[2], 0.0);
    assert_eq!(y[3], 1.0);
    assert_eq!(y[4], 1.0);
    assert!(y[5].is_finite() && y[5] > 3.3e38);
    assert_eq!(y[6], f32::INFINITY);
    assert_eq!(y[7], f32::INFINITY);
    assert_eq!(y[8], f32::INFINITY);
    for i in 9..12 {
        check_exp(x[i], y[i]).unwrap();
        assert!(y[i] > 0.0, "exp({}) = {}", x[i], y[i]);
    }
    assert!(y[12] <= f32::from_bits(1));
    assert_eq!(y[13], 0.0);
}

#[test]
fn ln_special_values() {
    assert!(exp::ln(f32::NAN).is_nan());
    assert!(exp::ln(-1.0).is_nan());
    assert_eq!(exp::ln(0.0), f32::NEG_INFINITY);
    assert_eq!(exp::ln(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp::ln(1.0), 0.0);
    let tiny = f32::from_bits(1);
    assert!((exp::ln(tiny) as f64 - (tiny as f64).ln()).abs() < 1e-5);
}

#[test]
fn softmax_edges() {
    let mut one = [3.5f32];
    softmax::softmax(&mut one);
    assert_eq!(one, [1.0]);
    let mut one = [3.5f32];
    softmax::log_softmax(&mut one);
    assert_eq!(one, [0.0]);
    // Huge inputs do not overflow (max-subtracted).
    let mut big = [1e30f32, 1e30, -1e30, 0.0, 1e30];
    softmax::softmax(&mut big);
    for (g, w) in big.iter().zip([1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0, 1.0 / 3.0]) {
        assert!((g - w).abs() <= 1e-7, "{big:?}");
    }
    for special in [f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = [special; 7];
        softmax::softmax(&mut x);
        assert!(x.iter().all(|v| v.is_nan()));
        let mut x = [special; 7];
        softmax::log_softmax(&mut x);
        assert!(x.iter().all(|v| v.is_nan()));
        assert_eq!(softmax::log_sum_exp(&[special; 6]), special);
        assert!(softmax::log_sum_exp(&[special, f32::NAN, special]).is_nan());
    }
    assert!(softmax::log_sum_exp(&[2.0, f32::NAN, 1.0]).is_nan());
    assert_eq!(softmax::log_sum_exp(&[f32::INFINITY, 1.0]), f32::INFINITY);
    assert_eq!(softmax::log_sum_exp(&[f32::NEG_INFINITY, 1.0]), 1.0);
    let mut empty: [f32; 0] = [];
    softmax::softmax(&mut empty);
    softmax::log_softmax(&mut empty);
    assert_eq!(reduce::sum(&empty), 0.0);
    assert_eq!(reduce::max(&empty), f32::NEG_INFINITY);
    assert_eq!(reduce::min(&empty), f32::INFINITY);
}

/// The ulp of `w` rounded to f32 (the spacing above it).
fn ulp_at(w: f64) -> f64 {
    let f = (w as f32).abs();
    (f32::from_bits(f.to_bits() + 1) - f) as f64
}

/// Dense sweeps: `exp` over every normal result in `[−104, 89]` within 2 ulp (1.23
/// measured), `ln` over `(0, 400]` within 1 ulp (0.74 measured).
#[test]
fn exp_and_ln_dense_sweeps() {
    let n = 400_000;
    let x: Vec<f32> = (0..n).map(|i| -104.0 + 193.0 * i as f32 / n as f32).collect();
    let mut y = vec![0.0f32; n];
    exp::exp(&x, &mut y);
    let mut worst = (0.0f64, 0.0f32);
    for i in 0..n {
        let w = (x[i] as f64).exp();
        if w > f32::MAX as f64 || w < f32::MIN_POSITIVE as f64 {
            continue;
        }
        let e = (y[i] as f64 - w).abs() / ulp_at(w);
        if e > worst.0 {
            worst = (e, x[i]);
        }
    }
    std::println!("exp: worst {} ulp at {}", worst.0, worst.1);
    assert!(worst.0 <= 2.0, "exp: {} ulp at {}", worst.0, worst.1);
    let mut worst = (0.0f64, 0.0f32);
    for i in 1..n {
        let v = i as f32 / 1000.0;
        let w = (v as f64).ln();
        let e = (exp::ln(v) as f64 - w).abs() / ulp_at(w);
        if e > worst.0 {
            worst = (e, v);
        }
    }
    std::println!("ln: worst {} ulp at {}", worst.0, worst.1);
    assert!(worst.0 <= 1.0, "ln: {} ulp at {}", worst.0, worst.1);
}
