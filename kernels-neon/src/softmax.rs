//! Softmax and log-softmax over one contiguous lane, in place, and log-sum-exp.
//!
//! Algorithm: three passes, the reference's operations in the reference's order.
//! 1. `max` with `fmaxnm` over four lanes (NaN-ignoring, like `f32::max`; the lane order
//!    cannot change a maximum). An empty lane is left alone.
//! 2. `e_i = exp(x_i − max)` with [`exp4`](crate::exp::exp4) (≤ 2 ulp, the AVX2 `exp8`
//!    class), summed in four lanes (pairwise `faddp` at the end, the tail's values added
//!    in order after it); softmax stores `e_i`.
//! 3. softmax multiplies by `1 / sum`; log-softmax subtracts `max + ln(sum)` from the
//!    original `x_i` ([`ln`](crate::exp::ln), ≤ 1 ulp). [`log_sum_exp`] runs passes 1
//!    and 2 and returns `max + ln(sum)`.
//!
//! Error against an exact softmax: each output is `e_i / sum` with `e_i` a few ulp off and
//! `sum` off by at most `(n/4 + 2)` roundings (relative, all terms positive), so a
//! relative `(n/4 + 8) · 2⁻²⁴`; graft's contract against its scalar reference is
//! `1e-5 · (1 + |y|)` for lanes up to a few hundred. Log-softmax adds the absolute
//! rounding of `x − shift`, `2⁻²⁴ · (|x| + |shift|)`.
//!
//! Special values, as the scalar reference (`max`-subtract, `expf`, divide): a NaN in the
//! lane makes the sum NaN and therefore every output NaN; a non-finite `max` (`+∞`
//! present, or every value `−∞`/NaN) makes `x − max` NaN somewhere and every output NaN,
//! so that case writes NaN directly. `log_sum_exp` with a non-finite `max` is NaN if the
//! lane holds a NaN and `max` otherwise (`ln Σ e^x` of `±∞` terms), as the reference's
//! unshifted fallback gives.

use core::arch::aarch64::*;

use crate::exp::{exp4, ln};

/// `max(x)` ignoring NaN (`−∞` for an empty or all-NaN lane), as `fold(−∞, f32::max)`.
fn max_nm(x: &[f32]) -> f32 {
    let mut chunks = x.chunks_exact(4);
    // SAFETY: register-only arithmetic and loads of exact 4-element chunks.
    let mut m = unsafe {
        let mut acc = vdupq_n_f32(f32::NEG_INFINITY);
        for c in &mut chunks {
            acc = vmaxnmq_f32(acc, vld1q_f32(c.as_ptr()));
        }
        vmaxnmvq_f32(acc)
    };
    for &v in chunks.remainder() {
        m = m.max(v);
    }
    m
}

/// `Σ e_i` with `e_i = exp(x_i − max)` over the `n` values at `src`; each `e_i` is also
/// stored at `dst[i]` unless `dst` is null.
///
/// # Safety
/// `src` must be readable and `dst` (if not null) writable for `n` values; the two may be
/// the same pointer (each value is read before it is written).
#[inline(always)]
unsafe fn exp_sum(src: *const f32, dst: *mut f32, n: usize, max: f32) -> f32 {
    let n4 = n - n % 4;
    // SAFETY: every vector access is at i + 4 ≤ n and every tail access at i < n (the
    // caller's contract); the padded tail vector is a local array.
    unsafe {
        let m = vdupq_n_f32(max);
        let mut acc = vdupq_n_f32(0.0);
        let mut i = 0;
        while i < n4 {
            let e = exp4(vsubq_f32(vld1q_f32(src.add(i)), m));
            acc = vaddq_f32(acc, e);
            if !dst.is_null() {
                vst1q_f32(dst.add(i), e);
            }
            i += 4;
        }
        let mut sum = vaddvq_f32(acc);
        if n4 < n {
            let mut t = [max; 4];
            for (j, t) in t[..n - n4].iter_mut().enumerate() {
                *t = *src.add(n4 + j);
            }
            vst1q_f32(t.as_mut_ptr(), exp4(vsubq_f32(vld1q_f32(t.as_ptr()), m)));
            for (j, &e) in t[..n - n4].iter().enumerate() {
                sum += e;
                if !dst.is_null() {
                    *dst.add(n4 + j) = e;
                }
            }
        }
        sum
    }
}

/// `y ← f(y, c)` four lanes at a time (`g` for the tail).
#[inline(always)]
fn apply(x: &mut [f32], c: f32, f: impl Fn(float32x4_t, float32x4_t) -> float32x4_t, g: impl Fn(f32, f32) -> f32) {
    // SAFETY: register-only broadcast.
    let cv = unsafe { vdupq_n_f32(c) };
    let mut chunks = x.chunks_exact_mut(4);
    for ch in &mut chunks {
        // SAFETY: `ch` has exactly 4 elements.
        unsafe { vst1q_f32(ch.as_mut_ptr(), f(vld1q_f32(ch.as_ptr()), cv)) };
    }
    for v in chunks.into_remainder() {
        *v = g(*v, c);
    }
}

/// `x ← softmax(x)` in place (see the module docs). An empty lane is left alone.
pub fn softmax(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = max_nm(x);
    if !max.is_finite() {
        x.fill(f32::NAN);
        return;
    }
    let p = x.as_mut_ptr();
    // SAFETY: `p` covers `x.len()` values, read before written.
    let sum = unsafe { exp_sum(p, p, x.len(), max) };
    let inv = 1.0 / sum;
    apply(
        x,
        inv,
        |v, c| {
            // SAFETY: register-only.
            unsafe { vmulq_f32(v, c) }
        },
        |v, c| v * c,
    );
}

/// `x ← log_softmax(x) = x − max − ln Σ e^(x − max)` in place. An empty lane is left
/// alone.
pub fn log_softmax(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = max_nm(x);
    if !max.is_finite() {
        x.fill(f32::NAN);
        return;
    }
    // SAFETY: reads `x.len()` values of `x`, writes nothing.
    let sum = unsafe { exp_sum(x.as_ptr(), core::ptr::null_mut(), x.len(), max) };
    let shift = max + ln(sum);
    apply(
        x,
        shift,
        |v, c| {
            // SAFETY: register-only.
            unsafe { vsubq_f32(v, c) }
        },
        |v, c| v - c,
    );
}

/// `ln Σ e^x_i = max + ln Σ e^(x_i − max)` (`−∞` for an empty lane).
pub fn log_sum_exp(x: &[f32]) -> f32 {
    let max = max_nm(x);
    if !max.is_finite() {
        return if x.iter().any(|v| v.is_nan()) { f32::NAN } else { max };
    }
    // SAFETY: reads `x.len()` values of `x`, writes nothing.
    let sum = unsafe { exp_sum(x.as_ptr(), core::ptr::null_mut(), x.len(), max) };
    max + ln(sum)
}
