//! Activations and element-wise operations, four lanes at a time.
//!
//! Algorithm: `relu`, `add`, `mul` and `divide`-like ops are one IEEE operation per
//! element and match the scalar reference bit for bit (`relu` keeps NaN: only lanes that
//! compare less than zero become zero). `sigmoid` and `silu` evaluate `e^x` with
//! [`exp4`] (a Cephes-style range reduction and a degree-6 polynomial, a few ulp from
//! `expf` over the whole f32 range), then divide exactly; graft's contract for them is a relative 2e-6. Tails shorter than a vector
//! are copied into a zero-padded vector and run through the same code, so every element
//! sees the same arithmetic. `layer_norm` sums with four lanes (pairwise `faddp` at the
//! end) and normalizes each element with the reference's operation order.

use core::arch::aarch64::*;

use crate::exp::exp4;

/// Applies `f` to `x` four lanes at a time (the tail padded with zeros).
#[inline(always)]
fn map(x: &mut [f32], f: impl Fn(float32x4_t) -> float32x4_t) {
    let mut chunks = x.chunks_exact_mut(4);
    for c in &mut chunks {
        // SAFETY: `c` has exactly 4 elements.
        unsafe { vst1q_f32(c.as_mut_ptr(), f(vld1q_f32(c.as_ptr()))) };
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut t = [0.0f32; 4];
        t[..rest.len()].copy_from_slice(rest);
        // SAFETY: `t` has 4 elements.
        unsafe { vst1q_f32(t.as_mut_ptr(), f(vld1q_f32(t.as_ptr()))) };
        let n = rest.len();
        rest.copy_from_slice(&t[..n]);
    }
}

/// `1 / (1 + e^−x)` per lane.
#[inline(always)]
pub fn sigmoid4(x: float32x4_t) -> float32x4_t {
    // SAFETY: register-only NEON arithmetic.
    unsafe {
        let one = vdupq_n_f32(1.0);
        vdivq_f32(one, vaddq_f32(one, exp4(vnegq_f32(x))))
    }
}

/// `max(x, 0)` in place; NaN stays NaN.
pub fn relu(x: &mut [f32]) {
    map(x, |v| {
        // SAFETY: register-only; `vbslq` keeps the lanes that are not `< 0`.
        unsafe { vbslq_f32(vcltzq_f32(v), vdupq_n_f32(0.0), v) }
    });
}

/// The logistic function in place.
pub fn sigmoid(x: &mut [f32]) {
    map(x, sigmoid4);
}

/// `x · sigmoid(x)` in place.
pub fn silu(x: &mut [f32]) {
    map(x, |v| {
        // SAFETY: register-only.
        unsafe { vmulq_f32(v, sigmoid4(v)) }
    });
}

/// `y = op(a, b)` over the common length, four lanes at a time.
#[inline(always)]
fn binary(
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    op: impl Fn(float32x4_t, float32x4_t) -> float32x4_t,
    s: impl Fn(f32, f32) -> f32,
) {
    let n = y.len().min(a.len()).min(b.len());
    let n4 = n - n % 4;
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 ≤ n for all three slices.
        unsafe { vst1q_f32(y.as_mut_ptr().add(i), op(vld1q_f32(a.as_ptr().add(i)), vld1q_f32(b.as_ptr().add(i)))) };
        i += 4;
    }
    for i in n4..n {
        y[i] = s(a[i], b[i]);
    }
}

/// `y = a + b`.
pub fn add(a: &[f32], b: &[f32], y: &mut [f32]) {
    binary(
        a,
        b,
        y,
        |a, b| {
            // SAFETY: register-only.
            unsafe { vaddq_f32(a, b) }
        },
        |a, b| a + b,
    );
}

/// `y = a ⊙ b`.
pub fn mul(a: &[f32], b: &[f32], y: &mut [f32]) {
    binary(
        a,
        b,
        y,
        |a, b| {
            // SAFETY: register-only.
            unsafe { vmulq_f32(a, b) }
        },
        |a, b| a * b,
    );
}

/// Sum of `f(x)` with four lanes (zero-padded tail, lanes summed pairwise).
#[inline(always)]
fn sum_by(x: &[f32], f: impl Fn(float32x4_t) -> float32x4_t) -> f32 {
    // SAFETY: register-only arithmetic and loads of exact 4-element chunks.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        let mut chunks = x.chunks_exact(4);
        for c in &mut chunks {
            acc = vaddq_f32(acc, f(vld1q_f32(c.as_ptr())));
        }
        let rest = chunks.remainder();
        let mut s = vaddvq_f32(acc);
        for &v in rest {
            s += vgetq_lane_f32::<0>(f(vdupq_n_f32(v)));
        }
        s
    }
}

/// `y = (x − mean) / sqrt(var + eps) · gamma + beta` over one row (`gamma`, `beta` and
/// `y` at least as long as `x`).
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    let n = x.len();
    let (gamma, y) = (&gamma[..n], &mut y[..n]);
    let beta = beta.map(|b| &b[..n]);
    let mean = sum_by(x, |v| v) / n as f32;
    // SAFETY: register-only arithmetic.
    let m = unsafe { vdupq_n_f32(mean) };
    let var = sum_by(x, |v| {
        // SAFETY: register-only arithmetic.
        unsafe {
            let d = vsubq_f32(v, m);
            // Padding lanes of the tail are 0 − mean: excluded by `sum_by`, which only
            // takes lane 0 for tail elements.
            vmulq_f32(d, d)
        }
    }) / n as f32;
    // SAFETY: register-only; IEEE square root, as `sqrtf`.
    let inv = 1.0 / unsafe { vgetq_lane_f32::<0>(vsqrtq_f32(vdupq_n_f32(var + eps))) };
    for i in 0..n {
        y[i] = (x[i] - mean) * inv * gamma[i] + beta.map_or(0.0, |b| b[i]);
    }
}
