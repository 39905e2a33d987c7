//! AVX-512 element-wise ops, dot products and layer norm.
//!
//! The AVX2 kernels with 16 lanes and masked tails (no scalar remainder loops). `relu`,
//! `add` and `mul` are single IEEE operations per element and match the reference bit
//! for bit; `sigmoid` and `silu` use the AVX2 kernel's `exp` polynomial on 16 lanes (a
//! few ulp); GELU and tanh use the scalar functions. `dot` follows this level's linear
//! order (16 lanes, masked last vector, fixed tree), and layer norm reduces with 16
//! lanes, so both match the reference within rounding.

use core::arch::x86_64::*;

use super::linear::hsum16;
use crate::graph::Activation;
use crate::kernels::activation;

/// The mask of the lanes of the step at `i` of a slice of `n`.
#[inline(always)]
fn mask(n: usize, i: usize) -> u16 {
    let left = n - i;
    if left >= 16 { u16::MAX } else { (1u16 << left) - 1 }
}

/// `e^x` for 16 lanes, inputs clamped to ±88.38 (the AVX2 kernel's `exp8`, widened).
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    // SAFETY: register-only AVX-512F arithmetic; the caller guarantees the features.
    unsafe {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.376_26)), _mm512_set1_ps(88.376_26));
        let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(core::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(pow2))
    }
}

#[inline(always)]
unsafe fn sigmoid16(x: __m512) -> __m512 {
    // SAFETY: register-only arithmetic.
    unsafe {
        let one = _mm512_set1_ps(1.0);
        _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))))
    }
}

/// Applies `f` to 16 lanes at a time, the last step masked.
#[inline(always)]
unsafe fn map(x: &mut [f32], f: impl Fn(__m512) -> __m512) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i < n {
        let m = mask(n, i);
        // SAFETY: the masked lanes are below n; masked-off lanes are not touched.
        unsafe { _mm512_mask_storeu_ps(p.add(i), m, f(_mm512_maskz_loadu_ps(m, p.add(i)))) };
        i += 16;
    }
}

/// Applies `act` in place.
///
/// # Safety
/// AVX-512F and FMA must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn activate(act: Activation, x: &mut [f32]) {
    // SAFETY: features per the contract; `map` stays in bounds.
    unsafe {
        match act {
            // max(0, x) returns x when x is NaN (second operand), like the reference.
            Activation::Relu => map(x, |v| _mm512_max_ps(_mm512_setzero_ps(), v)),
            Activation::Sigmoid => map(x, |v| sigmoid16(v)),
            Activation::Silu => map(x, |v| _mm512_mul_ps(v, sigmoid16(v))),
            other => x.iter_mut().for_each(|v| *v = activation::apply(other, *v)),
        }
    }
}

/// `y = a ∘ b` for an element-wise `op`.
#[inline(always)]
unsafe fn binary(a: &[f32], b: &[f32], y: &mut [f32], op: impl Fn(__m512, __m512) -> __m512) {
    let n = y.len().min(a.len()).min(b.len());
    let mut i = 0;
    while i < n {
        let m = mask(n, i);
        // SAFETY: the masked lanes are below n for all three slices.
        unsafe {
            let v = op(_mm512_maskz_loadu_ps(m, a.as_ptr().add(i)), _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)));
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), m, v);
        }
        i += 16;
    }
}

/// `y = a + b`.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn add(a: &[f32], b: &[f32], y: &mut [f32]) {
    // SAFETY: features per the contract.
    unsafe { binary(a, b, y, |a, b| _mm512_add_ps(a, b)) }
}

/// `y = a ⊙ b`.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn mul(a: &[f32], b: &[f32], y: &mut [f32]) {
    // SAFETY: features per the contract.
    unsafe { binary(a, b, y, |a, b| _mm512_mul_ps(a, b)) }
}

/// `Σ a·b` in this level's canonical linear order.
///
/// # Safety
/// AVX-512F and FMA must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let m = mask(n, i);
        // SAFETY: the masked lanes are below n.
        unsafe {
            acc = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, a.as_ptr().add(i)),
                _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)),
                acc,
            )
        };
        i += 16;
    }
    // SAFETY: register-only.
    unsafe { hsum16(acc) }
}

/// Sum of `f(x)` over a row with 16 lanes (absent lanes of the last step add `+0`).
#[inline(always)]
unsafe fn sum_by(x: &[f32], f: impl Fn(__m512) -> __m512) -> f32 {
    let n = x.len();
    // SAFETY: masked loads below n; register-only arithmetic.
    unsafe {
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let m = mask(n, i);
            acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, f(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)))));
            i += 16;
        }
        hsum16(acc)
    }
}

/// Layer norm over one row.
///
/// # Safety
/// AVX-512F and FMA must be available; all slices have `x.len()` elements (beta if
/// present).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub(super) unsafe fn layer_norm(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    let n = x.len();
    assert!(gamma.len() >= n && y.len() >= n && beta.is_none_or(|b| b.len() >= n), "layer norm operands too short");
    // SAFETY: features per the contract; masked accesses stay below n (checked above).
    unsafe {
        let mean = sum_by(x, |v| v) / n as f32;
        let m = _mm512_set1_ps(mean);
        let var = sum_by(x, |v| {
            let d = _mm512_sub_ps(v, m);
            _mm512_mul_ps(d, d)
        }) / n as f32;
        let inv = 1.0 / libm::sqrtf(var + eps);
        let iv = _mm512_set1_ps(inv);
        let mut i = 0;
        while i < n {
            let k = mask(n, i);
            let v = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x.as_ptr().add(i)), m), iv),
                _mm512_maskz_loadu_ps(k, gamma.as_ptr().add(i)),
            );
            let shift = match beta {
                Some(b) => _mm512_maskz_loadu_ps(k, b.as_ptr().add(i)),
                None => _mm512_setzero_ps(),
            };
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), k, _mm512_add_ps(v, shift));
            i += 16;
        }
    }
}
