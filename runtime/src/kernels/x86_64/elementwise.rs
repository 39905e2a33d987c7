//! AVX2 element-wise ops, dot products and layer norm.
//!
//! `relu`, `add` and `mul` are single IEEE operations per element and match the scalar
//! reference bit for bit. `sigmoid` and `silu` use a vectorized `exp` (Cephes-style range
//! reduction to `2^n · e^r`, degree-6 polynomial; a few ulp) and match within a relative
//! 1e-6. GELU and tanh are rare in recommender towers and use the scalar functions.
//! `dot` follows the linear kernel's canonical order (8 lanes, fixed tree, FMA tail), and
//! layer norm reduces with 8 lanes, so both match the reference within rounding.

use core::arch::x86_64::*;

use super::linear::hsum;
use crate::graph::Activation;
use crate::kernels::activation;

/// Applies `f` to 8 lanes at a time and `g` to the tail.
#[inline(always)]
unsafe fn map(x: &mut [f32], f: impl Fn(__m256) -> __m256, g: impl Fn(f32) -> f32) {
    let n = x.len();
    let n8 = n - n % 8;
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= n.
        unsafe { _mm256_storeu_ps(p.add(i), f(_mm256_loadu_ps(p.add(i)))) };
        i += 8;
    }
    for i in n8..n {
        // SAFETY: i < n.
        unsafe { *p.add(i) = g(*p.add(i)) };
    }
}

/// `e^x` for 8 lanes, inputs clamped to ±88.38.
#[inline(always)]
pub(super) unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: register-only AVX2/FMA arithmetic; the caller guarantees the features.
    unsafe {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.376_26)), _mm256_set1_ps(88.376_26));
        let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(core::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }
}

#[inline(always)]
unsafe fn sigmoid8(x: __m256) -> __m256 {
    // SAFETY: register-only arithmetic.
    unsafe {
        let one = _mm256_set1_ps(1.0);
        _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))))
    }
}

/// Applies `act` in place.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn activate(act: Activation, x: &mut [f32]) {
    // SAFETY: features per the contract; `map` stays in bounds.
    unsafe {
        match act {
            // max(0, x) returns x when x is NaN (second operand), like the reference.
            Activation::Relu => map(x, |v| _mm256_max_ps(_mm256_setzero_ps(), v), activation::relu),
            Activation::Sigmoid => map(x, |v| sigmoid8(v), activation::sigmoid),
            Activation::Silu => map(x, |v| _mm256_mul_ps(v, sigmoid8(v)), |v| activation::apply(Activation::Silu, v)),
            other => x.iter_mut().for_each(|v| *v = activation::apply(other, *v)),
        }
    }
}

/// `y = a ∘ b` for an element-wise `op`.
#[inline(always)]
unsafe fn binary(
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    op: impl Fn(__m256, __m256) -> __m256,
    s: impl Fn(f32, f32) -> f32,
) {
    let n = y.len().min(a.len()).min(b.len());
    let n8 = n - n % 8;
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= n for all three slices.
        unsafe {
            let v = op(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    for i in n8..n {
        y[i] = s(a[i], b[i]);
    }
}

/// `y = a + b`.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn add(a: &[f32], b: &[f32], y: &mut [f32]) {
    // SAFETY: features per the contract.
    unsafe { binary(a, b, y, |a, b| _mm256_add_ps(a, b), |a, b| a + b) }
}

/// `y = a ⊙ b`.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn mul(a: &[f32], b: &[f32], y: &mut [f32]) {
    // SAFETY: features per the contract.
    unsafe { binary(a, b, y, |a, b| _mm256_mul_ps(a, b), |a, b| a * b) }
}

/// `Σ a·b` in the canonical linear order.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let n8 = n - n % 8;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 <= n.
        unsafe { acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc) };
        i += 8;
    }
    // SAFETY: register-only.
    let mut s = unsafe { hsum(acc) };
    for i in n8..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}

/// Sum of `f(x)` over a row with 8 lanes.
#[inline(always)]
unsafe fn sum_by(x: &[f32], f: impl Fn(__m256) -> __m256, g: impl Fn(f32) -> f32) -> f32 {
    let n = x.len();
    let n8 = n - n % 8;
    // SAFETY: register-only / in-bounds loads (i + 8 <= n).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < n8 {
            acc = _mm256_add_ps(acc, f(_mm256_loadu_ps(x.as_ptr().add(i))));
            i += 8;
        }
        let mut s = hsum(acc);
        for &v in &x[n8..] {
            s += g(v);
        }
        s
    }
}

/// Layer norm over one row.
///
/// # Safety
/// AVX2 and FMA must be available; all slices have `x.len()` elements (beta if present).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn layer_norm(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    let n = x.len();
    // SAFETY: features per the contract.
    unsafe {
        let mean = sum_by(x, |v| v, |v| v) / n as f32;
        let m = _mm256_set1_ps(mean);
        let var = sum_by(
            x,
            |v| {
                let d = _mm256_sub_ps(v, m);
                _mm256_mul_ps(d, d)
            },
            |v| (v - mean) * (v - mean),
        ) / n as f32;
        let inv = 1.0 / libm::sqrtf(var + eps);
        let iv = _mm256_set1_ps(inv);
        let n8 = n - n % 8;
        let mut i = 0;
        while i < n8 {
            let v = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), m), iv),
                _mm256_loadu_ps(gamma.as_ptr().add(i)),
            );
            let v = match beta {
                Some(b) => _mm256_add_ps(v, _mm256_loadu_ps(b.as_ptr().add(i))),
                None => _mm256_add_ps(v, _mm256_setzero_ps()),
            };
            _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
            i += 8;
        }
        for i in n8..n {
            y[i] = (x[i] - mean) * inv * gamma[i] + beta.map_or(0.0, |b| b[i]);
        }
    }
}
