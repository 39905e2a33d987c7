//! AVX2 softmax, `exp` and value × value matrix products.
//!
//! Softmax uses the vectorized `exp` of the element-wise kernels (a few ulp) and sums in
//! 8 lanes, so it matches the reference within a relative 1e-5. The matrix product
//! accumulates `c[i, :] += a[i, p] · b[p, :]` over `p` in order with FMA, 8 columns at a
//! time, so each output is the same sequential sum as the reference up to FMA rounding.

use core::arch::x86_64::*;

use super::elementwise::exp8;
use super::linear::hsum;
use crate::graph::UnaryOp;

/// In-place softmax (or log-softmax) of one contiguous lane.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn softmax(x: &mut [f32], log: bool) {
    let n = x.len();
    if n == 0 {
        return;
    }
    // `f32::max` skips NaN: look for it explicitly.
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() || x.iter().any(|v| v.is_nan()) {
        // All -inf, or +inf / NaN present: the reference handles the special values.
        crate::kernels::scalar::reference_softmax(x, log);
        return;
    }
    let n8 = n - n % 8;
    let p = x.as_mut_ptr();
    // SAFETY: every load/store is at i + 8 <= n (or i < n in the tails); features per the
    // contract.
    unsafe {
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < n8 {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            acc = _mm256_add_ps(acc, e);
            if !log {
                _mm256_storeu_ps(p.add(i), e);
            }
            i += 8;
        }
        let mut sum = hsum(acc);
        for i in n8..n {
            let e = libm::expf(*p.add(i) - max);
            sum += e;
            if !log {
                *p.add(i) = e;
            }
        }
        if log {
            let shift = _mm256_set1_ps(max + libm::logf(sum));
            let mut i = 0;
            while i < n8 {
                _mm256_storeu_ps(p.add(i), _mm256_sub_ps(_mm256_loadu_ps(p.add(i)), shift));
                i += 8;
            }
            let s = max + libm::logf(sum);
            for i in n8..n {
                *p.add(i) -= s;
            }
        } else {
            let inv = 1.0 / sum;
            let iv = _mm256_set1_ps(inv);
            let mut i = 0;
            while i < n8 {
                _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), iv));
                i += 8;
            }
            for i in n8..n {
                *p.add(i) *= inv;
            }
        }
    }
}

/// `c[m, n] = a[m, k] · b[k, n]`, row-major.
///
/// # Safety
/// AVX2 and FMA must be available; `a`, `b`, `c` hold at least `m·k`, `k·n`, `m·n`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn matmul(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "matmul operands too short");
    let n8 = n - n % 8;
    let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: indices stay below m·k, k·n and m·n (checked above); features per the contract.
    unsafe {
        for i in 0..m {
            let crow = cp.add(i * n);
            let mut j = 0;
            // 32 columns at a time: four accumulators in registers across the k loop.
            while j + 32 <= n8 {
                let mut acc = [_mm256_setzero_ps(); 4];
                for q in 0..k {
                    let av = _mm256_set1_ps(*ap.add(i * k + q));
                    let brow = bp.add(q * n + j);
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(av, _mm256_loadu_ps(brow.add(8 * t)), *a);
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(crow.add(j + 8 * t), *a);
                }
                j += 32;
            }
            while j < n8 {
                let mut acc = _mm256_setzero_ps();
                for q in 0..k {
                    let av = _mm256_set1_ps(*ap.add(i * k + q));
                    acc = _mm256_fmadd_ps(av, _mm256_loadu_ps(bp.add(q * n + j)), acc);
                }
                _mm256_storeu_ps(crow.add(j), acc);
                j += 8;
            }
            for j in n8..n {
                let mut s = 0.0f32;
                for q in 0..k {
                    s += *ap.add(i * k + q) * *bp.add(q * n + j);
                }
                *crow.add(j) = s;
            }
        }
    }
}

/// Unary ops: `exp` vectorized (the element-wise kernels' `exp`, a few ulp), the rest
/// through the scalar reference.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn unary(op: UnaryOp, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    if op != UnaryOp::Exp {
        for (y, &x) in y[..n].iter_mut().zip(&x[..n]) {
            *y = crate::kernels::scalar::unary(op, x);
        }
        return;
    }
    let n8 = n - n % 8;
    let mut i = 0;
    // SAFETY: i + 8 <= n for every vector access; features per the contract.
    unsafe {
        let limit = _mm256_set1_ps(88.0);
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        while i < n8 {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            // exp8 clamps its input: a lane that is NaN or beyond ±88 (overflow to +inf,
            // subnormal results) takes the scalar path for the whole chunk.
            let special = _mm256_cmp_ps::<_CMP_NLT_UQ>(_mm256_and_ps(v, abs), limit);
            if _mm256_movemask_ps(special) == 0 {
                _mm256_storeu_ps(y.as_mut_ptr().add(i), exp8(v));
            } else {
                for j in i..i + 8 {
                    *y.as_mut_ptr().add(j) = libm::expf(*x.as_ptr().add(j));
                }
            }
            i += 8;
        }
    }
    for i in n8..n {
        y[i] = libm::expf(x[i]);
    }
}
