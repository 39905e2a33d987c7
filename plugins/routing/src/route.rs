//! The scalar pieces of routing: scores and the routing decision, the softmax of the soft
//! mode, and the output link functions.
//!
//! Scores are accumulated in f64 by a plain loop rather than by the host GEMM: routing is a
//! discontinuous decision, so it must not depend on how a kernel tiles or orders its sums
//! (two identical centers must tie exactly, whatever their positions, so the lower index
//! wins) nor on how the host splits rows into chunks. It costs `K·D` multiply-adds per row,
//! the size of one small layer.

/// `⟨x, c⟩` accumulated in f64.
fn dot(x: &[f32], c: &[f32]) -> f64 {
    x.iter().zip(c).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

/// The routing decision `κ = argmax_j ⟨x, c_j⟩` over `centers` (`K × D`, row-major):
/// ties go to the lower index and NaN scores rank below every number (a row whose
/// scores are all NaN goes to cluster 0). With `scores`, each score is also written there
/// (as f32, `K` values).
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
mod tests {
    use super::*;

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
