//! Reductions of one contiguous lane to a value: sum, max, min.
//!
//! Algorithm: `sum` keeps four 4-lane accumulators over blocks of 16 (four independent
//! `fadd` chains, enough to hide the add latency), folds them as `(a0 + a1) + (a2 + a3)`,
//! continues over the remaining whole vectors of 4, reduces the lanes pairwise (`faddv`)
//! and adds the last `n mod 4` values in order. The order is fixed by `n` alone, so the
//! result is deterministic; against the sequential reference it differs only by
//! reassociation, at most `≈ (n/16 + 4) · 2⁻²⁴ · Σ|x_i|`.
//!
//! `max` and `min` use `fmax`/`fmin` (and `fmaxv`/`fminv` across lanes), which propagate
//! NaN like graft's reference (`b > a || b.is_nan()`): any NaN in the lane gives NaN.
//! Otherwise the result is the reference's value exactly (a maximum does not depend on the
//! order), except that between `+0` and `−0` `fmax` prefers `+0` and `fmin` `−0`, where
//! the reference keeps the first one it saw (the two compare equal). An empty lane gives
//! `−∞` (max) or `+∞` (min), the folds' starting values.

use core::arch::aarch64::*;

/// `Σ x_i` (0 for an empty lane).
pub fn sum(x: &[f32]) -> f32 {
    let n = x.len();
    let n16 = n - n % 16;
    let n4 = n - n % 4;
    let p = x.as_ptr();
    // SAFETY: every load is at i + 4 ≤ n.
    let mut s = unsafe {
        let mut a = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i < n16 {
            for (t, acc) in a.iter_mut().enumerate() {
                *acc = vaddq_f32(*acc, vld1q_f32(p.add(i + 4 * t)));
            }
            i += 16;
        }
        let mut acc = vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
        while i < n4 {
            acc = vaddq_f32(acc, vld1q_f32(p.add(i)));
            i += 4;
        }
        vaddvq_f32(acc)
    };
    for &v in &x[n4..] {
        s += v;
    }
    s
}

/// Reduces with a NaN-propagating lane op (`fmax`/`fmin`), starting from `init`.
#[inline(always)]
fn extreme(
    x: &[f32],
    init: f32,
    op: impl Fn(float32x4_t, float32x4_t) -> float32x4_t,
    across: impl Fn(float32x4_t) -> f32,
    better: impl Fn(f32, f32) -> bool,
) -> f32 {
    let mut chunks = x.chunks_exact(16);
    // SAFETY: register-only arithmetic and loads of exact 16-element chunks (4 × 4).
    let mut m = unsafe {
        let mut a = [vdupq_n_f32(init); 4];
        for c in &mut chunks {
            for (t, acc) in a.iter_mut().enumerate() {
                *acc = op(*acc, vld1q_f32(c.as_ptr().add(4 * t)));
            }
        }
        across(op(op(a[0], a[1]), op(a[2], a[3])))
    };
    for &v in chunks.remainder() {
        if better(v, m) || v.is_nan() {
            m = v;
        }
    }
    m
}

/// `max x_i`, NaN if any is NaN, `−∞` for an empty lane.
pub fn max(x: &[f32]) -> f32 {
    extreme(
        x,
        f32::NEG_INFINITY,
        |a, b| {
            // SAFETY: register-only.
            unsafe { vmaxq_f32(a, b) }
        },
        |v| {
            // SAFETY: register-only.
            unsafe { vmaxvq_f32(v) }
        },
        |v, m| v > m,
    )
}

/// `min x_i`, NaN if any is NaN, `+∞` for an empty lane.
pub fn min(x: &[f32]) -> f32 {
    extreme(
        x,
        f32::INFINITY,
        |a, b| {
            // SAFETY: register-only.
            unsafe { vminq_f32(a, b) }
        },
        |v| {
            // SAFETY: register-only.
            unsafe { vminvq_f32(v) }
        },
        |v, m| v < m,
    )
}
