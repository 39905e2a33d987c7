//! The scalar pieces of routing: scores and the routing decision, the softmax of the soft
//! mode, and the output link functions.
//!
//! Routing is a discontinuous decision, so it must not depend on how a kernel tiles or
//! orders its sums, on the instruction set, or on how the host splits rows into chunks
//! (two identical centers must tie exactly, whatever their positions, so the lower index
//! wins). Hard mode therefore uses **f32 SIMD scores with an exact f64 fallback for rows
//! whose argmax is within the f32 error bound: routing decisions are identical on every
//! machine and equal to the f64 reference**:
//!
//! - All scores of a call come from one host GEMM, `S = X·Cᵀ` in f32 (fast, but its
//!   rounding depends on the kernel).
//! - [`ScoreBound`] bounds each f32 score's distance from the exact `⟨x, c_j⟩`, for any
//!   summation order (FMA or not, flush-to-zero or not). A row whose f32 winner beats every
//!   other score by more than both bounds has the same winner as the exact scores, and so
//!   as the f64 scores, whatever their summation order (the bound also covers f64's error).
//! - Any other row (near ties, identical centers, NaN, overflow) is rescored by [`dot`]:
//!   f64 with a fixed summation order, so bit-identical everywhere, and its argmax is taken
//!   by [`nearest`]'s tie and NaN rules.
//!
//! So every decision equals [`nearest`]'s; the f32 scores only decide how fast it is
//! reached. Soft mode weighs the towers by the scores' values, not only their ranking, so
//! it keeps [`nearest`]'s f64 scores for every row.

use graft_plugin_abi::MatView;

/// Unit roundoff of f32 (round to nearest).
const F32_UNIT: f64 = 1.0 / (1u64 << 24) as f64;
/// Unit roundoff of f64.
const F64_UNIT: f64 = 1.0 / (1u64 << 53) as f64;
/// Absolute error per operation that flush-to-zero / denormals-are-zero can add (twice the
/// smallest normal f32, so the relative error compounded on it is covered too).
const FLUSH_SLACK: f64 = 2.0 * f32::MIN_POSITIVE as f64;
/// Covers the rounding of the bound's own f64 arithmetic (relative `D·2⁻⁵³ ≤ 2⁻³⁰`).
const ROUNDING_MARGIN: f64 = 1.0 + 1.0 / (1u64 << 20) as f64;
/// The widest `D` whose f32 scores are certified (`D·u ≤ 1/2`); wider rows always take the
/// f64 path.
pub(crate) const MAX_CERTIFIED_WIDTH: usize = 1 << 23;

/// Number of partial sums of [`dot`]: one per lane of two f64 AVX vectors or four SSE2 ones.
const LANES: usize = 8;

/// `⟨x, c⟩` in f64 with a fixed summation order: element `i` goes to partial sum `i mod 8`,
/// and the partial sums are combined by a fixed tree. Every product of two f32 is exact in
/// f64 and Rust never contracts to FMA, so the result is bit-identical on every machine,
/// and the eight independent chains vectorize.
pub(crate) fn dot(x: &[f32], c: &[f32]) -> f64 {
    let (x8, x_tail) = x.as_chunks::<LANES>();
    let (c8, c_tail) = c.as_chunks::<LANES>();
    let mut acc = [0f64; LANES];
    for (a, b) in x8.iter().zip(c8) {
        for ((sum, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *sum += f64::from(a) * f64::from(b);
        }
    }
    for ((sum, &a), &b) in acc.iter_mut().zip(x_tail).zip(c_tail) {
        *sum += f64::from(a) * f64::from(b);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// The routing decision `κ = argmax_j ⟨x, c_j⟩` over `centers` (`K × D`, row-major), with
/// [`dot`]'s f64 scores: ties go to the lower index and NaN scores rank below every number
/// (a row whose scores are all NaN goes to cluster 0). With `scores`, each score is also
/// written there (as f32, `K` values).
pub(crate) fn nearest(x: &[f32], centers: &[f32], mut scores: Option<&mut [f32]>) -> usize {
    let d = x.len();
    let mut best: Option<(usize, f64)> = None;
    for (j, c) in centers.chunks_exact(d.max(1)).enumerate() {
        let s = if d == 0 { 0.0 } else { dot(x, c) };
        if let Some(out) = scores.as_deref_mut()
            && let Some(slot) = out.get_mut(j)
        {
            *slot = s as f32;
        }
        if !s.is_nan() && best.is_none_or(|(_, b)| s > b) {
            best = Some((j, s));
        }
    }
    best.map_or(0, |(j, _)| j)
}

/// Bounds on the error of f32 scores, fixed at load: `|fl32(⟨x, c_j⟩) − ⟨x, c_j⟩|` plus the
/// error of any f64 evaluation is at most `slope_j·‖x‖ + offset_j`.
///
/// Derivation: a `D`-term dot product in precision `u`, summed in any order, errs by at most
/// `γ_D·Σ|x_i c_i| ≤ γ_D·‖x‖·‖c_j‖` with `γ_D = D·u / (1 − D·u)`; both precisions' `γ` are
/// summed. A kernel running with flush-to-zero / denormals-are-zero can also lose a
/// subnormal input (`|x_i c_i| < 2⁻¹²⁶·|c_i|` or `2⁻¹²⁶·|x_i|`; summed, `2⁻¹²⁶·√D·‖·‖`) and
/// one flushed result per operation (`2⁻¹²⁶` each, `2D` operations); that slack is doubled
/// to cover the relative error compounded on it. Everything is inflated by
/// [`ROUNDING_MARGIN`] for the rounding of this f64 arithmetic itself. It assumes the
/// kernel computes in f32 as the ABI's f32 `linear` does; one that rounded operands or
/// partial sums to a narrower type (bf16, TF32) would void it.
#[derive(Debug, Clone)]
pub(crate) struct ScoreBound {
    /// Per center: `(γ₃₂ + γ₆₄)·‖c_j‖ + slack·√D`, inflated.
    slope: Vec<f64>,
    /// Per center: `slack·(√D·‖c_j‖ + 2D)`, inflated.
    offset: Vec<f64>,
}

impl ScoreBound {
    /// The bounds for `centers` (`K × d`), or `None` when `d` is 0 or wider than
    /// [`MAX_CERTIFIED_WIDTH`] (then no f32 score is trusted).
    pub(crate) fn new(centers: &[f32], d: usize) -> Option<ScoreBound> {
        if d == 0 || d > MAX_CERTIFIED_WIDTH {
            return None;
        }
        let df = d as f64;
        let gamma = |u: f64| df * u / (1.0 - df * u);
        let g = gamma(F32_UNIT) + gamma(F64_UNIT);
        let sqrt_d = df.sqrt();
        let (slope, offset) = centers
            .chunks_exact(d)
            .map(|c| {
                let norm = dot(c, c).sqrt();
                (
                    ROUNDING_MARGIN * (g * norm + FLUSH_SLACK * sqrt_d),
                    ROUNDING_MARGIN * FLUSH_SLACK * (sqrt_d * norm + 2.0 * df),
                )
            })
            .unzip();
        Some(ScoreBound { slope, offset })
    }

    /// The number of centers.
    pub(crate) fn clusters(&self) -> usize {
        self.slope.len()
    }

    /// The error bound of score `j` for a row of norm `x_norm`.
    fn bound(&self, j: usize, x_norm: f64) -> f64 {
        self.slope[j] * x_norm + self.offset[j]
    }

    /// The argmax of one row's f32 `scores` if it is certain (the winner's lead over every
    /// other score exceeds both their bounds, and every score is finite: a NaN or an
    /// overflow certifies nothing), else `None`. `x_norm` is the row's `‖x‖`.
    pub(crate) fn certified_argmax(&self, scores: &[f32], x_norm: f64) -> Option<usize> {
        // From here on every quantity is finite, so the comparisons below mean what they say.
        if !x_norm.is_finite() {
            return None;
        }
        let mut best = 0usize;
        let mut top = f32::NEG_INFINITY;
        for (j, &s) in scores.iter().enumerate() {
            if !s.is_finite() {
                return None;
            }
            if s > top {
                (best, top) = (j, s);
            }
        }
        let (top, top_bound) = (f64::from(top), self.bound(best, x_norm));
        for (j, &s) in scores.iter().enumerate() {
            if j != best && top - f64::from(s) <= top_bound + self.bound(j, x_norm) {
                return None;
            }
        }
        Some(best)
    }
}

/// Decides every row of `x` into `kappa` from the f32 `scores` of `S = X·Cᵀ` (`rows × K`,
/// row-major): the certified argmax where there is one, else [`nearest`] over `centers`.
/// Returns how many rows took the f64 fallback.
pub(crate) fn decide(x: MatView<'_>, centers: &[f32], bound: &ScoreBound, scores: &[f32], kappa: &mut [u32]) -> usize {
    let mut fallbacks = 0;
    for (i, (slot, s)) in kappa.iter_mut().zip(scores.chunks_exact(bound.clusters().max(1))).enumerate().take(x.rows())
    {
        let row = x.row(i);
        let j = match bound.certified_argmax(s, dot(row, row).sqrt()) {
            Some(j) => j,
            None => {
                fallbacks += 1;
                nearest(row, centers, None)
            }
        };
        // K ≤ MAX_CLUSTERS = 2²⁴, so κ fits.
        *slot = j as u32;
    }
    fallbacks
}

/// Replaces scores by `softmax(scores)`, computed in f64 with the maximum subtracted. NaN
/// scores (a NaN input row) give NaN weights, which carry on into the output as they
/// would through the base model.
pub(crate) fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().filter(|s| !s.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let max = f64::from(max);
    let mut sum = 0f64;
    for s in scores.iter() {
        sum += (f64::from(*s) - max).exp();
    }
    for s in scores.iter_mut() {
        *s = ((f64::from(*s) - max).exp() / sum) as f32;
    }
}

/// `σ(z)`, without overflow for large `|z|`.
pub(crate) fn sigmoid(z: f32) -> f32 {
    let z = f64::from(z);
    let p = if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    };
    p as f32
}

/// Probabilities are clamped to `[P_MIN, 1 − P_MIN]` before [`logit`], so a saturated
/// mixture gives a finite logit (±16.1).
pub(crate) const P_MIN: f64 = 1e-7;

/// `ln(p / (1 − p))` of `p` clamped to `[P_MIN, 1 − P_MIN]`.
pub(crate) fn logit(p: f32) -> f32 {
    let p = f64::from(p).clamp(P_MIN, 1.0 - P_MIN);
    (p / (1.0 - p)).ln() as f32
}

/// `(1 − m)·base + m·routed`, exact at `m = 0` (base kept) and `m = 1` (routed).
pub(crate) fn blend(base: f32, routed: f32, m: f32) -> f32 {
    if m == 1.0 {
        routed
    } else if m == 0.0 {
        base
    } else {
        (1.0 - m) * base + m * routed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// xorshift64*, uniform in [-1, 1).
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.uniform()).collect()
        }
    }

    fn unit_rows(mut v: Vec<f32>, d: usize) -> Vec<f32> {
        for c in v.chunks_exact_mut(d) {
            let norm = c.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32;
            c.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    /// f32 scores as two different kernels would round them: summed forward, or backward
    /// with FMA.
    fn f32_scores(x: &[f32], centers: &[f32], rows: usize, backward: bool) -> Vec<f32> {
        let d = x.len() / rows;
        let mut s = Vec::new();
        for r in x.chunks_exact(d) {
            for c in centers.chunks_exact(d) {
                s.push(if backward {
                    r.iter().zip(c).rev().fold(0f32, |acc, (a, b)| a.mul_add(*b, acc))
                } else {
                    r.iter().zip(c).map(|(a, b)| a * b).sum()
                });
            }
        }
        s
    }

    /// Routes `x` through `decide` with both kernels' scores; checks every decision against
    /// `nearest` and returns the fallback count of each.
    fn decide_both(x: &[f32], centers: &[f32], d: usize) -> [usize; 2] {
        let rows = x.len() / d;
        let bound = ScoreBound::new(centers, d).unwrap();
        let view = MatView::new(x, rows, d, d).unwrap();
        let want: Vec<u32> = x.chunks_exact(d).map(|r| nearest(r, centers, None) as u32).collect();
        [false, true].map(|backward| {
            let scores = f32_scores(x, centers, rows, backward);
            let mut kappa = vec![u32::MAX; rows];
            let fallbacks = decide(view, centers, &bound, &scores, &mut kappa);
            assert_eq!(kappa, want, "backward = {backward}");
            fallbacks
        })
    }

    #[test]
    fn dot_has_the_documented_fixed_order() {
        let mut rng = Rng(11);
        for n in 0..=27 {
            let (x, c) = (rng.vec(n), rng.vec(n));
            let mut lanes = [0f64; 8];
            for i in 0..n {
                lanes[i % 8] += f64::from(x[i]) * f64::from(c[i]);
            }
            let l = lanes;
            let want = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
            assert_eq!(dot(&x, &c).to_bits(), want.to_bits(), "n = {n}");
            let seq: f64 = x.iter().zip(&c).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            assert!((dot(&x, &c) - seq).abs() <= 1e-14, "n = {n}");
        }
        // Small integers: exact whatever the order.
        let x: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        assert_eq!(dot(&x, &x), (1..=19).map(|i| f64::from(i * i)).sum::<f64>());
    }

    #[test]
    fn identical_centers_fall_back_to_the_lower_index() {
        let d = 40;
        let mut rng = Rng(3);
        let mut centers = unit_rows(rng.vec(3 * d), d);
        let (first, rest) = centers.split_at_mut(d);
        rest[d..].copy_from_slice(first);
        // Rows aligned with center 0 (= center 2): both tie exactly, so all fall back.
        let x: Vec<f32> = (0..8).flat_map(|i| centers[..d].iter().map(move |c| c * (1.0 + i as f32))).collect();
        assert_eq!(decide_both(&x, &centers, d), [8, 8]);
        let bound = ScoreBound::new(&centers, d).unwrap();
        assert_eq!(bound.certified_argmax(&[1.0, 0.0, 1.0], 1.0), None);
        let mut kappa = [9u32; 8];
        let scores = f32_scores(&x, &centers, 8, false);
        decide(MatView::new(&x, 8, d, d).unwrap(), &centers, &bound, &scores, &mut kappa);
        assert_eq!(kappa, [0; 8], "the tie goes to the lower index");
    }

    #[test]
    fn clear_rows_are_certified() {
        let d = 64;
        let mut rng = Rng(5);
        let centers = unit_rows(rng.vec(4 * d), d);
        // Each row is a center plus small noise: a clear winner, no fallback.
        let x: Vec<f32> = (0..32)
            .flat_map(|i| {
                let c = &centers[(i % 4) * d..(i % 4 + 1) * d];
                c.iter().map(|v| v + 0.01 * rng.uniform()).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(decide_both(&x, &centers, d), [0, 0]);
        let bound = ScoreBound::new(&centers, d).unwrap();
        assert_eq!(bound.certified_argmax(&[0.1, 0.9, 0.2, -0.5], 1.0), Some(1));
    }

    #[test]
    fn near_ties_are_decided_in_f64() {
        // Center 1 is center 0 with a few elements one ulp higher: the exact gap
        // (~1e-9) is far below f32 rounding (~1e-7), so the f32 scores rank the pair at
        // random and only the certificate keeps the decisions right.
        let d = 256;
        let mut rng = Rng(7);
        let mut centers = unit_rows(rng.vec(4 * d), d);
        for i in (0..d).step_by(17) {
            centers[d + i] = f32::from_bits(centers[i].to_bits() + 1);
            centers[d + i + 1] = centers[i + 1];
        }
        for i in (0..d).filter(|i| i % 17 != 0) {
            centers[d + i] = centers[i];
        }
        let rows = 200;
        // Rows near center 0 so the pair wins.
        let x: Vec<f32> =
            (0..rows).flat_map(|_| centers[..d].iter().map(|c| c + 0.02 * rng.uniform()).collect::<Vec<_>>()).collect();
        let [forward, backward] = decide_both(&x, &centers, d);
        assert!(forward >= rows - 2 && backward >= rows - 2, "{forward} {backward}");
        // The raw f32 argmax would have been wrong on some rows.
        let scores = f32_scores(&x, &centers, rows, false);
        let wrong = x
            .chunks_exact(d)
            .zip(scores.chunks_exact(4))
            .filter(|(r, s)| {
                let f32_best = (0..4).fold(0, |b, j| if s[j] > s[b] { j } else { b });
                f32_best != nearest(r, &centers, None)
            })
            .count();
        assert!(wrong > 0, "the test would not exercise the certificate");
    }

    #[test]
    fn non_finite_scores_certify_nothing() {
        let bound = ScoreBound::new(&[1.0, 0.0, 0.0, 1.0], 2).unwrap();
        assert_eq!(bound.certified_argmax(&[1.0, 0.0], 1.0), Some(0));
        assert_eq!(bound.certified_argmax(&[f32::NAN, 0.0], 1.0), None);
        assert_eq!(bound.certified_argmax(&[0.0, f32::NAN], 1.0), None);
        assert_eq!(bound.certified_argmax(&[f32::INFINITY, 0.0], 1.0), None);
        assert_eq!(bound.certified_argmax(&[1.0, 0.0], f64::NAN), None);
        assert_eq!(bound.certified_argmax(&[1.0, 0.0], f64::INFINITY), None);
        // A NaN or overflowing row falls back to `nearest`: cluster 0 for all-NaN, and
        // the exact winner when f32 products overflow.
        let centers = [1.0, 0.0, 0.0, 1.0];
        let x = [f32::NAN, 1.0, 2e38, 3e38];
        let scores = [f32::NAN, f32::NAN, f32::INFINITY, 3e38];
        let mut kappa = [7u32; 2];
        let fallbacks = decide(MatView::new(&x, 2, 2, 2).unwrap(), &centers, &bound, &scores, &mut kappa);
        assert_eq!((fallbacks, kappa), (2, [0, 1]));
    }

    #[test]
    fn the_bound_holds_and_has_its_limits() {
        let d = 300;
        let mut rng = Rng(13);
        let centers = unit_rows(rng.vec(2 * d), d);
        let bound = ScoreBound::new(&centers, d).unwrap();
        let x = rng.vec(50 * d);
        for backward in [false, true] {
            let s = f32_scores(&x, &centers, 50, backward);
            for (r, s) in x.chunks_exact(d).zip(s.chunks_exact(2)) {
                let norm = dot(r, r).sqrt();
                for (j, c) in centers.chunks_exact(d).enumerate() {
                    let err = (f64::from(s[j]) - dot(r, c)).abs();
                    assert!(err <= bound.bound(j, norm), "{err} > {}", bound.bound(j, norm));
                }
            }
        }
        // γ_300 ≈ 300·2⁻²⁴: the slope of a unit center.
        assert!((bound.slope[0] * (1u64 << 24) as f64 / 300.0 - 1.0).abs() < 1e-3, "{:?}", bound.slope);
        assert!(ScoreBound::new(&[], 0).is_none());
        assert!(ScoreBound::new(&[0.0; 4], MAX_CERTIFIED_WIDTH + 1).is_none());
    }

    #[test]
    fn decision_ties_and_nan() {
        let centers = [1.0, 0.0, 0.6, 0.8, 0.6, 0.8];
        let mut s = [0f32; 3];
        // Worked example §4.5: s = [0.5, 1.1], κ = 1; the duplicate center ties → 1.
        assert_eq!(nearest(&[0.5, 1.0], &centers, Some(&mut s)), 1);
        assert_eq!(s, [0.5, 1.1, 1.1]);
        assert_eq!(nearest(&[1.0, 0.0], &centers, None), 0);
        // All NaN → 0; NaN never wins over a number.
        assert_eq!(nearest(&[f32::NAN, 0.0], &centers, None), 0);
        let c2 = [f32::NAN, 0.0, 0.0, 1.0];
        assert_eq!(nearest(&[1.0, -5.0], &c2, None), 1);
    }

    #[test]
    fn softmax_matches_worked_example() {
        let mut s = [0.5f32, 1.1];
        softmax(&mut s);
        assert!((s[0] - 0.354_344).abs() < 1e-6 && (s[1] - 0.645_656).abs() < 1e-6, "{s:?}");
        let mut big = [1000.0f32, 0.0];
        softmax(&mut big);
        assert_eq!(big, [1.0, 0.0]);
    }

    #[test]
    fn links() {
        assert!((sigmoid(0.5) - 0.622_459).abs() < 1e-6);
        assert!((sigmoid(-1.5) - 0.182_426).abs() < 1e-6);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((logit(0.622_459_3) - 0.5).abs() < 1e-5);
        assert!(logit(0.0).is_finite() && logit(1.0).is_finite());
        assert!((logit(1.0) - 16.118_095).abs() < 1e-3);
        assert_eq!(blend(3.0, f32::INFINITY, 0.0), 3.0);
        assert_eq!(blend(f32::INFINITY, 2.0, 1.0), 2.0);
        assert_eq!(blend(1.0, 3.0, 0.5), 2.0);
    }
}
