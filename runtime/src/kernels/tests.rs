//! Property tests: every fast kernel against the scalar reference, on random shapes that
//! include tails shorter than the vector width, plus the determinism contract (a row's
//! result does not depend on its batch or on how weight rows are split).

#![allow(clippy::unwrap_used)]

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::{Kernels, SCALAR, WeightData, WeightMatrix, available};
use crate::format::WeightFormat;
use crate::graph::{Activation, BagMode};
use crate::quant;
use crate::view::{MatMut, MatRef};

/// A quantized copy of an f32 matrix that can lend a [`WeightMatrix`].
struct Owned {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    f32s: Vec<f32>,
    halves: Vec<u16>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    bytes: Vec<u8>,
}

impl Owned {
    fn new(format: WeightFormat, rows: usize, cols: usize, values: &[f32]) -> Owned {
        let mut o = Owned {
            format,
            rows,
            cols,
            f32s: Vec::new(),
            halves: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            bytes: Vec::new(),
        };
        for row in values.chunks(cols) {
            match format {
                WeightFormat::F32 => o.f32s.extend_from_slice(row),
                WeightFormat::F16 => o.halves.extend(row.iter().map(|&v| quant::f16_from_f32(v))),
                WeightFormat::Bf16 => o.halves.extend(row.iter().map(|&v| quant::bf16_from_f32(v))),
                WeightFormat::Q8 => {
                    let mut c = vec![0i8; cols];
                    o.scales.push(quant::q8_quantize_row(row, &mut c));
                    o.codes.extend(c);
                }
                WeightFormat::Q8Rowwise => {
                    let mut b = vec![0u8; cols + 8];
                    quant::q8_rowwise_quantize_row(row, &mut b);
                    o.bytes.extend(b);
                }
                WeightFormat::Q4 => {
                    let mut b = vec![0u8; format.row_bytes(cols)];
                    quant::q4_quantize_row(row, &mut b);
                    o.bytes.extend(b);
                }
            }
        }
        o
    }

    fn view(&self) -> WeightMatrix<'_> {
        let data = match self.format {
            WeightFormat::F32 => WeightData::F32(&self.f32s),
            WeightFormat::F16 => WeightData::F16(&self.halves),
            WeightFormat::Bf16 => WeightData::Bf16(&self.halves),
            WeightFormat::Q8 => WeightData::Q8 { codes: &self.codes, scales: &self.scales },
            WeightFormat::Q8Rowwise => WeightData::Q8Rowwise(&self.bytes),
            WeightFormat::Q4 => WeightData::Q4(&self.bytes),
        };
        WeightMatrix { data, rows: self.rows, cols: self.cols }
    }
}

/// The extra error the split-activation q8 path may add at `dotprod`/`i8mm` (see
/// [`super::Level::splits_q8_activations`]): `Σ|w_k| · max|x| / (127 · 2¹⁷)` for the
/// dequantized weight row `w`; zero for every other level and format.
fn split_bound(k: &Kernels, format: WeightFormat, x: &[f32], w: &[f32]) -> f32 {
    if !(k.level.splits_q8_activations() && format == WeightFormat::Q8) {
        return 0.0;
    }
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let l1: f32 = w.iter().map(|v| v.abs()).sum();
    l1 * amax / (127.0 * 131072.0) * 1.001
}

fn fast_tables() -> Vec<&'static Kernels> {
    available().into_iter().filter(|k| k.level != SCALAR.level).collect()
}

fn run_linear(
    k: &Kernels,
    x: &[f32],
    m: usize,
    w: &WeightMatrix<'_>,
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> Vec<f32> {
    let mut y = vec![0.0f32; m * w.rows];
    let mut scratch = vec![0.0f32; k.linear.scratch_len(w, m).max(1)];
    k.linear.linear(MatRef::dense(x, w.cols), w, bias, act, MatMut::dense(&mut y, w.rows), &mut scratch);
    y
}

fn values(len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-2.0f32..2.0, len)
}

const LINEAR_FORMATS: [WeightFormat; 5] =
    [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16, WeightFormat::Q8, WeightFormat::Q4];

/// (rows, outputs, inputs, x, w, bias, format index, activation).
type LinearCase = (usize, usize, usize, Vec<f32>, Vec<f32>, Vec<f32>, usize, Option<Activation>);

fn linear_case() -> impl Strategy<Value = LinearCase> {
    (1usize..10, 1usize..14, 1usize..80).prop_flat_map(|(m, n, k)| {
        (
            Just(m),
            Just(n),
            Just(k),
            values(m * k),
            values(n * k),
            values(n),
            0usize..LINEAR_FORMATS.len(),
            prop::option::of(prop::sample::select(Activation::ALL.to_vec())),
        )
    })
}

/// `y0 + alpha · x·Wᵀ` through `linear_accumulate`.
fn run_accumulate(k: &Kernels, x: &[f32], m: usize, w: &WeightMatrix<'_>, alpha: f32, y0: &[f32]) -> Vec<f32> {
    let mut y = y0.to_vec();
    let mut scratch = vec![0.0f32; k.linear.scratch_len(w, m).max(1)];
    k.linear.linear_accumulate(MatRef::dense(x, w.cols), w, alpha, MatMut::dense(&mut y, w.rows), &mut scratch);
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The adapter shrink/expand kernel: every level agrees with the reference, the
    /// reference agrees with `linear` (plus the prior `y`), and rows stay independent
    /// of the batch.
    #[test]
    fn linear_accumulate_matches_reference((m, n, k, x, w, y0, f, _act) in linear_case().prop_flat_map(|(m, n, k, x, w, _b, f, act)| {
        (Just(m), Just(n), Just(k), Just(x), Just(w), values(m * n), Just(f), Just(act))
    }), alpha in -3.0f32..3.0) {
        let owned = Owned::new(LINEAR_FORMATS[f], n, k, &w);
        let wm = owned.view();
        let reference = run_accumulate(&SCALAR, &x, m, &wm, alpha, &y0);
        let plain = run_linear(&SCALAR, &x, m, &wm, None, None);
        for i in 0..m * n {
            prop_assert!((reference[i] - (y0[i] + alpha * plain[i])).abs() <= 1e-5 * (1.0 + plain[i].abs() * alpha.abs()));
        }
        let mut deq = vec![0.0f32; k];
        for kern in available() {
            let got = run_accumulate(kern, &x, m, &wm, alpha, &y0);
            for r in 0..m {
                for o in 0..n {
                    wm.dequant_row(o, &mut deq);
                    let mag: f32 = x[r * k..(r + 1) * k].iter().zip(&deq).map(|(a, b)| (a * b).abs()).sum::<f32>();
                    let split = split_bound(kern, LINEAR_FORMATS[f], &x[r * k..(r + 1) * k], &deq);
                    let (g, e) = (got[r * n + o], reference[r * n + o]);
                    prop_assert!((g - e).abs() <= (2e-6 * mag + split) * alpha.abs() + 2e-6 * (1.0 + y0[r * n + o].abs()), "{} {:?} m{m} n{n} k{k} [{r},{o}]: {g} vs {e}", kern.level, LINEAR_FORMATS[f]);
                }
                let alone = run_accumulate(kern, &x[r * k..(r + 1) * k], 1, &wm, alpha, &y0[r * n..(r + 1) * n]);
                prop_assert_eq!(&alone[..], &got[r * n..(r + 1) * n], "{} row {} alone", kern.level, r);
            }
        }
    }

    #[test]
    fn linear_matches_reference((m, n, k, x, w, b, f, act) in linear_case()) {
        let owned = Owned::new(LINEAR_FORMATS[f], n, k, &w);
        let wm = owned.view();
        let reference = run_linear(&SCALAR, &x, m, &wm, Some(&b), act);
        // Scale the tolerance by the magnitude of the reduction.
        let mut deq = vec![0.0f32; k];
        for fast in fast_tables() {
            let got = run_linear(fast, &x, m, &wm, Some(&b), act);
            for r in 0..m {
                for o in 0..n {
                    wm.dequant_row(o, &mut deq);
                    let mag: f32 = x[r * k..(r + 1) * k].iter().zip(&deq).map(|(a, b)| (a * b).abs()).sum::<f32>() + b[o].abs();
                    let split = split_bound(fast, LINEAR_FORMATS[f], &x[r * k..(r + 1) * k], &deq);
                    let (g, e) = (got[r * n + o], reference[r * n + o]);
                    prop_assert!((g - e).abs() <= 2e-6 * mag + split + 1e-6, "{} {:?} m{m} n{n} k{k} [{r},{o}]: {g} vs {e}", fast.level, LINEAR_FORMATS[f]);
                }
            }
        }
    }

    #[test]
    fn linear_rows_do_not_depend_on_batch_or_split((m, n, k, x, w, b, f, act) in linear_case(), split in 0usize..14) {
        let owned = Owned::new(LINEAR_FORMATS[f], n, k, &w);
        let wm = owned.view();
        for kern in available() {
            let full = run_linear(kern, &x, m, &wm, Some(&b), act);
            for r in 0..m {
                let alone = run_linear(kern, &x[r * k..(r + 1) * k], 1, &wm, Some(&b), act);
                prop_assert_eq!(&alone[..], &full[r * n..(r + 1) * n], "{} row {} alone", kern.level, r);
            }
            let s = split.clamp(1, n);
            let left = run_linear(kern, &x, m, &wm.rows_range(0..s), Some(&b[..s]), act);
            for r in 0..m {
                prop_assert_eq!(&left[r * s..(r + 1) * s], &full[r * n..r * n + s]);
            }
            if s < n {
                let right = run_linear(kern, &x, m, &wm.rows_range(s..n), Some(&b[s..]), act);
                for r in 0..m {
                    prop_assert_eq!(&right[r * (n - s)..(r + 1) * (n - s)], &full[r * n + s..(r + 1) * n]);
                }
            }
        }
    }

    #[test]
    fn bags_match_reference_bit_for_bit(
        (rows, cols, table) in (1usize..12, 1usize..70).prop_flat_map(|(r, c)| (Just(r), Just(c), values(r * c))),
        ids in prop::collection::vec(0usize..1000, 0..7),
        f in 0usize..WeightFormat::ALL.len(),
        mean in any::<bool>(),
    ) {
        let owned = Owned::new(WeightFormat::ALL[f], rows, cols, &table);
        let wm = owned.view();
        let ids: Vec<i64> = ids.into_iter().map(|i| (i % rows) as i64).collect();
        let mode = if mean { BagMode::Mean } else { BagMode::Sum };
        let mut expect = vec![f32::NAN; cols];
        SCALAR.bag.bag(&wm, &ids, mode, &mut expect);
        for fast in fast_tables() {
            let mut got = vec![f32::NAN; cols];
            fast.bag.bag(&wm, &ids, mode, &mut got);
            prop_assert_eq!(bits(&got), bits(&expect), "{} {:?}", fast.level, WeightFormat::ALL[f]);
        }
    }

    #[test]
    fn elementwise_matches_reference(
        (a, b) in (0usize..50).prop_flat_map(|n| (values(n), values(n))),
        scale in 1.0f32..40.0,
    ) {
        let a: Vec<f32> = a.iter().map(|v| v * scale).collect();
        for fast in fast_tables() {
            for act in Activation::ALL {
                let (mut e, mut g) = (a.clone(), a.clone());
                SCALAR.elementwise.activate(act, &mut e);
                fast.elementwise.activate(act, &mut g);
                for (x, y) in g.iter().zip(&e) {
                    prop_assert!((x - y).abs() <= 2e-6 * y.abs() + 1e-7, "{} {:?}: {x} vs {y}", fast.level, act);
                }
            }
            for mul in [false, true] {
                let (mut e, mut g) = (vec![0.0; a.len()], vec![0.0; a.len()]);
                if mul {
                    SCALAR.elementwise.mul(&a, &b, &mut e);
                    fast.elementwise.mul(&a, &b, &mut g);
                } else {
                    SCALAR.elementwise.add(&a, &b, &mut e);
                    fast.elementwise.add(&a, &b, &mut g);
                }
                prop_assert_eq!(bits(&g), bits(&e));
            }
            let (d, e) = (fast.dot.dot(&a, &b), SCALAR.dot.dot(&a, &b));
            let mag: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            prop_assert!((d - e).abs() <= 2e-6 * mag + 1e-6);
        }
    }

    #[test]
    fn layer_norm_matches_reference(
        (x, gamma, beta) in (1usize..70).prop_flat_map(|n| (values(n), values(n), values(n))),
        shift in -50.0f32..50.0,
    ) {
        let x: Vec<f32> = x.iter().map(|v| v + shift).collect();
        let mut e = vec![0.0; x.len()];
        SCALAR.norm.layer_norm(&x, &gamma, Some(&beta), 1e-5, &mut e);
        for fast in fast_tables() {
            let mut g = vec![0.0; x.len()];
            fast.norm.layer_norm(&x, &gamma, Some(&beta), 1e-5, &mut g);
            for (a, b) in g.iter().zip(&e) {
                prop_assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn tails_around_the_vector_width() {
    // Fixed shapes right at the boundaries: empty tail, 1-element tail, 7-element tail,
    // q4 rows that end mid-block.
    for k in [1usize, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65] {
        for n in [1usize, 2, 3, 4, 5, 7] {
            for m in [1usize, 2, 3, 4, 5, 9] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
                let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
                for f in LINEAR_FORMATS {
                    let owned = Owned::new(f, n, k, &w);
                    let wm = owned.view();
                    let e = run_linear(&SCALAR, &x, m, &wm, None, None);
                    for fast in fast_tables() {
                        let g = run_linear(fast, &x, m, &wm, None, None);
                        for (a, b) in g.iter().zip(&e) {
                            assert!((a - b).abs() <= 1e-5 * (k as f32), "{f:?} m{m} n{n} k{k}: {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn many_panels_and_long_rows() {
    // k large enough that the dequantized panel holds only a few weight rows, so the
    // panel loop runs several times with sub-sliced biases; and a short reduction over
    // more outputs than one transposed panel holds (the LoRA expand shape); and long
    // GEMV rows against output counts that leave partial weight-row tiles (1 × 8 at
    // AVX-512, 1 × 6 at AVX2) with a q4 row ending mid-block.
    for (m, n, k) in [(5, 20, 8200), (7, 600, 12), (1, 517, 32), (1, 37, 1000), (3, 19, 1000)] {
        panels_case(m, n, k);
    }
}

fn panels_case(m: usize, n: usize, k: usize) {
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 50.0).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 40.0).collect();
    let b: Vec<f32> = (0..n).map(|i| i as f32).collect();
    for f in LINEAR_FORMATS {
        let owned = Owned::new(f, n, k, &w);
        let wm = owned.view();
        let e = run_linear(&SCALAR, &x, m, &wm, Some(&b), Some(Activation::Relu));
        for fast in fast_tables() {
            let g = run_linear(fast, &x, m, &wm, Some(&b), Some(Activation::Relu));
            for (a, c) in g.iter().zip(&e) {
                assert!((a - c).abs() <= 1e-3 * (1.0 + c.abs()), "{f:?}: {a} vs {c}");
            }
            let single = run_linear(fast, &x[..k], 1, &wm, Some(&b), Some(Activation::Relu));
            assert_eq!(bits(&single), bits(&g[..n]), "{f:?}: gemv vs panel path");
        }
    }
}

#[test]
fn reports_levels_under_test() {
    let levels: Vec<_> = available().iter().map(|k| k.level.as_str()).collect();
    std::println!("kernel levels under test: {levels:?}");
    assert_eq!(levels[0], "scalar");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn softmax_matches_reference(x in (0usize..40).prop_flat_map(values), log in any::<bool>(), scale in 0.1f32..30.0) {
        let x: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let mut want = x.clone();
        SCALAR.softmax.softmax(&mut want, log);
        for kern in fast_tables() {
            let mut got = x.clone();
            kern.softmax.softmax(&mut got, log);
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{}: {a} vs {b}", kern.level);
            }
        }
        if !log && !x.is_empty() {
            let sum: f32 = want.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn matmul_matches_reference(m in 1usize..6, k in 1usize..20, n in 1usize..70, seed in any::<u32>()) {
        let mk = |len: usize, salt: u32| -> Vec<f32> {
            (0..len).map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed ^ salt) % 17) as f32 / 4.0 - 2.0).collect()
        };
        let (a, b) = (mk(m * k, 1), mk(k * n, 2));
        // An obviously correct f64 triple loop.
        let mut want = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
            }
        }
        for kern in available() {
            let mut c = vec![f32::NAN; m * n];
            kern.matmul.matmul(&a, &b, &mut c, m, k, n);
            for (x, y) in c.iter().zip(&want) {
                prop_assert!((*x as f64 - y).abs() <= 1e-4 * (1.0 + y.abs()), "{}: {x} vs {y}", kern.level);
            }
        }
    }

    #[test]
    fn reductions_and_unary_match_naive(x in (1usize..40).prop_flat_map(values)) {
        use crate::graph::{ReduceOp, UnaryOp};
        let naive_sum: f64 = x.iter().map(|&v| v as f64).sum();
        for kern in available() {
            let r = |op| kern.reduce.reduce(op, &x) as f64;
            prop_assert!((r(ReduceOp::Sum) - naive_sum).abs() <= 1e-4 * (1.0 + naive_sum.abs()));
            prop_assert!((r(ReduceOp::Mean) - naive_sum / x.len() as f64).abs() <= 1e-4 * (1.0 + naive_sum.abs()));
            let mx = x.iter().cloned().fold(f32::MIN, f32::max);
            prop_assert_eq!(kern.reduce.reduce(ReduceOp::Max, &x), mx);
            let lse = x.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            prop_assert!((r(ReduceOp::LogSumExp) - lse).abs() <= 1e-4 * (1.0 + lse.abs()));
            let mut y = vec![0.0f32; x.len()];
            kern.unary.unary(UnaryOp::Exp, &x, &mut y);
            for (&v, &e) in x.iter().zip(&y) {
                prop_assert!((e as f64 - (v as f64).exp()).abs() <= 1e-6 * (v as f64).exp(), "exp({v}) = {e}");
            }
            kern.unary.unary(UnaryOp::Erf, &x, &mut y);
            for (&v, &e) in x.iter().zip(&y) {
                prop_assert!((e as f64 - erf_series(v as f64)).abs() < 1e-5, "erf({v}) = {e}");
            }
        }
    }
}

/// erf by its Taylor series (|x| ≤ 3) or 1 (beyond), independent of libm.
fn erf_series(x: f64) -> f64 {
    if x.abs() > 3.0 {
        return x.signum() * (1.0 - libm::erfc(x.abs()));
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / core::f64::consts::PI.sqrt()
}

/// The aarch64 tables' tensor kernels against the reference where the random cases above
/// do not reach: `exp` over the whole f32 range and at NaN/±∞, reductions and softmax with
/// NaN, ±∞ and empty lanes, lanes longer than the 16-wide blocks. (The AVX2 table clamps
/// `exp` to ±88.38, so these full-range checks are for the NEON levels only.)
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_tensor_kernels_match_reference_at_the_edges() {
    use crate::graph::{ReduceOp, UnaryOp};

    /// Equal classification (NaN, ±∞, sign of zero aside) and within `rel · |want| + abs`.
    fn close(got: f32, want: f32, rel: f32, abs: f32) -> bool {
        if want.is_nan() || got.is_nan() {
            return want.is_nan() && got.is_nan();
        }
        if want.is_infinite() || got.is_infinite() {
            return got == want;
        }
        (got - want).abs() <= rel * want.abs() + abs.max(f32::from_bits(1))
    }

    let neon: Vec<_> =
        fast_tables().into_iter().filter(|k| matches!(k.level.as_str(), "neon" | "dotprod" | "i8mm")).collect();
    assert!(!neon.is_empty(), "no NEON table on this aarch64 CPU");

    let mut x: Vec<f32> = (0..2000).map(|i| -104.0 + 193.0 * i as f32 / 2000.0).collect();
    x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 88.72, 88.73, -87.5, -103.5]);
    let mut want = vec![0.0f32; x.len()];
    SCALAR.unary.unary(UnaryOp::Exp, &x, &mut want);
    let lanes: Vec<Vec<f32>> = vec![
        vec![],
        vec![1.5],
        (0..301).map(|i| ((i * 37 % 101) as f32 - 50.0) / 3.0).collect(),
        (0..67).map(|i| ((i * 13 % 29) as f32 - 14.0) * 7.0).collect(),
        vec![1.0, f32::NAN, 3.0, -2.0, 5.0, 0.5, 7.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 9.0],
        vec![f32::NEG_INFINITY; 19],
        vec![1.0, f32::INFINITY, 3.0, -2.0, 5.0],
        vec![f32::NEG_INFINITY, 1.0, 2.0, f32::NEG_INFINITY],
        vec![1e30, -1e30, 1e30, 0.0, 3e29],
    ];
    for kern in neon {
        let mut got = vec![0.0f32; x.len()];
        kern.unary.unary(UnaryOp::Exp, &x, &mut got);
        for i in 0..x.len() {
            assert!(close(got[i], want[i], 1e-6, 0.0), "{}: exp({}) = {} want {}", kern.level, x[i], got[i], want[i]);
        }
        for lane in &lanes {
            for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min, ReduceOp::LogSumExp, ReduceOp::L2] {
                let (g, w) = (kern.reduce.reduce(op, lane), SCALAR.reduce.reduce(op, lane));
                let exact = matches!(op, ReduceOp::Max | ReduceOp::Min);
                // Sums are reassociated: an absolute bound in the lane's magnitude.
                let mag = lane.iter().map(|v| v.abs()).sum::<f32>()
                    / if op == ReduceOp::Mean { lane.len() as f32 } else { 1.0 };
                assert!(
                    if exact { g == w || (g.is_nan() && w.is_nan()) } else { close(g, w, 1e-5, 1e-6 * mag) },
                    "{}: {op:?} of {} values: {g} want {w}",
                    kern.level,
                    lane.len()
                );
            }
            for log in [false, true] {
                let (mut g, mut w) = (lane.clone(), lane.clone());
                kern.softmax.softmax(&mut g, log);
                SCALAR.softmax.softmax(&mut w, log);
                for (a, b) in g.iter().zip(&w) {
                    assert!(
                        a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{}: softmax(log {log}) of {} values: {a} want {b}",
                        kern.level,
                        lane.len()
                    );
                }
            }
        }
    }
}
