//! `e^x` over a slice, four lanes at a time, and the scalar `ln` that log-softmax needs.
//!
//! Algorithm ([`exp4`]): the Cephes `expf` scheme that graft's AVX2 `exp8` uses, with the
//! same constants, so both are in the same accuracy class (≤ 2 ulp from a correctly
//! rounded `e^x` over the whole range; graft's contract is a relative 1e-6):
//! `n = round(x · log2 e)`, `r = x − n · ln 2` with `ln 2` split in two (`0.693359375`
//! has 9 significant bits, so `n · C1` is exact for every `|n| ≤ 150`, and the FMAs make
//! `r` exact up to the rounding of `C2`), `e^r = 1 + r + r² · P(r)` with the degree-5
//! Cephes polynomial `P` (degree 6 overall) on `|r| ≤ ln2/2`, then `· 2^n`.
//!
//! One difference from `exp8`, which clamps the input to ±88.38 (fine for sigmoid, whose
//! inputs saturate long before): here the input is clamped to `[−104, 88.75]` and `2^n`
//! is applied as two exact power-of-two factors `2^⌊n/2⌋ · 2^(n − ⌊n/2⌋)`, each a normal
//! float for every `n` in `[−150, 128]`. The first product is exact, the second rounds
//! once, so results overflow to `+∞` exactly where `expf` does (`x > 88.7228`), go
//! gradually subnormal below `x ≈ −87.34` instead of flushing to zero, and underflow to
//! `0` at the bottom of the subnormal range. NaN propagates (`fmax`/`fmin` keep NaN, and
//! every later step of a NaN lane stays NaN); `+∞ → +∞`, `−∞ → 0`.
//!
//! Tails shorter than a vector are copied into a padded vector and run through the same
//! code, so every element gets the same arithmetic whatever its position.
//!
//! [`ln`] is the Cephes `logf` (mantissa in `[√½, √2)`, degree-9 polynomial, `ln 2`
//! split in two), within 1 ulp over positive normal inputs; it is evaluated once per
//! softmax lane, so it stays scalar.

use core::arch::aarch64::*;

/// `e^x` per lane over the full f32 range (see the module docs).
#[inline(always)]
pub fn exp4(x: float32x4_t) -> float32x4_t {
    // SAFETY: register-only NEON arithmetic (baseline on this target).
    unsafe {
        let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-104.0)), vdupq_n_f32(88.75));
        let fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(core::f32::consts::LOG2_E)));
        let r = vfmsq_f32(x, fx, vdupq_n_f32(0.693_359_4));
        let r = vfmsq_f32(r, fx, vdupq_n_f32(-2.121_944_4e-4));
        let mut y = vdupq_n_f32(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            y = vfmaq_f32(vdupq_n_f32(c), y, r);
        }
        let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
        // n ∈ [−150, 128] (NaN lanes convert to 0 and stay NaN through `y`).
        let n = vcvtq_s32_f32(fx);
        let n1 = vshrq_n_s32::<1>(n);
        let n2 = vsubq_s32(n, n1);
        let bias = vdupq_n_s32(127);
        let p1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias)));
        let p2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias)));
        vmulq_f32(vmulq_f32(y, p1), p2)
    }
}

/// `y[i] = e^x[i]` over the common length.
pub fn exp(x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    let n4 = n - n % 4;
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 ≤ n for both slices.
        unsafe { vst1q_f32(y.as_mut_ptr().add(i), exp4(vld1q_f32(x.as_ptr().add(i)))) };
        i += 4;
    }
    if n4 < n {
        let mut t = [0.0f32; 4];
        t[..n - n4].copy_from_slice(&x[n4..]);
        // SAFETY: `t` has 4 elements.
        unsafe { vst1q_f32(t.as_mut_ptr(), exp4(vld1q_f32(t.as_ptr()))) };
        y[n4..].copy_from_slice(&t[..n - n4]);
    }
}

/// `e^x` in place.
pub fn exp_in_place(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(4);
    for c in &mut chunks {
        // SAFETY: `c` has exactly 4 elements.
        unsafe { vst1q_f32(c.as_mut_ptr(), exp4(vld1q_f32(c.as_ptr()))) };
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut t = [0.0f32; 4];
        t[..rest.len()].copy_from_slice(rest);
        // SAFETY: `t` has 4 elements.
        unsafe { vst1q_f32(t.as_mut_ptr(), exp4(vld1q_f32(t.as_ptr()))) };
        let n = rest.len();
        rest.copy_from_slice(&t[..n]);
    }
}

/// Natural logarithm of a positive normal `x` (Cephes `logf`, ≤ 1 ulp). Zero, subnormal,
/// negative and non-finite inputs follow IEEE conventions only roughly: `0 → −∞`,
/// `x < 0` or NaN `→ NaN`, `+∞ → +∞`, subnormals are treated as their normal scaling.
pub fn ln(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x == f32::INFINITY {
        return x;
    }
    let (x, extra) = if x < f32::MIN_POSITIVE { (x * 16_777_216.0, -24) } else { (x, 0) };
    // x = m · 2^e with m ∈ [0.5, 1).
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126 + extra;
    let mut m = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000);
    if m < core::f32::consts::FRAC_1_SQRT_2 {
        e -= 1;
        m = m + m - 1.0;
    } else {
        m -= 1.0;
    }
    let z = m * m;
    let mut y = 7.037_683_6e-2f32;
    for c in [
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        y = y * m + c;
    }
    let ef = e as f32;
    let mut y = y * m * z;
    y += -2.121_944_4e-4 * ef;
    y += -0.5 * z;
    let r = m + y;
    r + 0.693_359_4 * ef
}
