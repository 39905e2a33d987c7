//! Splitting an f32 activation row into three int8 digits, so int8 dot-product
//! instructions (SDOT, SMMLA) can multiply it with q8 weights *exactly*.
//!
//! Why: an int8-activation path that quantizes `x` to one int8 per value loses ~1 %
//! relative precision, which would break graft's kernel contract (results within a
//! rounding-scaled tolerance of the f32 reference) and its ONNX Runtime parity tests.
//! Three digits keep 23 bits of the row's dynamic range instead:
//!
//! 1. `s = amax / (127 · 2¹⁶)` with `amax = max |x_k|` (in f64), `q_k = round(x_k / s)`,
//!    so `|q_k| ≤ 127 · 2¹⁶ < 2²³` and `|x_k − s·q_k| ≤ s/2`.
//! 2. `q_k = 2¹⁶·hi_k + 2⁸·mid_k + lo_k` with balanced digits `mid, lo ∈ [−128, 127]` and
//!    `hi ∈ [−127, 127]`.
//! 3. A kernel sums `Σ c_k·hi_k`, `Σ c_k·mid_k`, `Σ c_k·lo_k` in i32 (exact: each term is at
//!    most 127·128, so 2³¹ is reached only past 2¹⁷ columns, which callers must not exceed,
//!    see [`MAX_COLS`]) and combines `D = 2¹⁶·H + 2⁸·M + L` in i64: the exact integer
//!    `Σ c_k·q_k`, whatever the instruction or the summation order.
//! 4. The dot product is `f32(f64(D) · s)`; the caller's epilogue multiplies by the weight
//!    row's scale.
//!
//! Error bound, for codes `c` (weights `w_k = c_k · scale`):
//! `|result − Σ x_k·c_k| ≤ Σ |c_k| · amax / (127 · 2¹⁷) + 2⁻²⁴·|result|`, i.e. relative to
//! the row's *largest* activation, about one f32 ulp of `amax` per weight. A row holding a
//! NaN or an infinity has no finite scale: [`split_row`] returns `None` and callers use the
//! f32 path for that row, which propagates it like the reference.

/// `q = round(x / s)` spans `±SPLIT_RANGE`.
pub const SPLIT_RANGE: f64 = 127.0 * 65536.0;

/// Longest reduction the digit sums keep exact in i32 lanes (`2¹⁷` columns).
pub const MAX_COLS: usize = 1 << 17;

/// Splits `x` into digits, calling `put(k, [hi, mid, lo])` for each column in order, and
/// returns the scale `s`, or `None` if `x` holds a NaN or an infinity (then `put` may
/// have been called for some columns).
pub fn split_row(x: &[f32], mut put: impl FnMut(usize, [i8; 3])) -> Option<f64> {
    let mut amax = 0.0f32;
    for &v in x {
        let a = if v < 0.0 { -v } else { v };
        if a.is_nan() || a > f32::MAX {
            return None;
        }
        if a > amax {
            amax = a;
        }
    }
    if amax == 0.0 {
        x.iter().enumerate().for_each(|(k, _)| put(k, [0, 0, 0]));
        return Some(0.0);
    }
    let inv = SPLIT_RANGE / amax as f64;
    for (k, &v) in x.iter().enumerate() {
        let t = v as f64 * inv;
        // Round half away from zero; |t| ≤ SPLIT_RANGE, so the i64 is exact.
        let q = (t + if t < 0.0 { -0.5 } else { 0.5 }) as i64;
        put(k, digits(q));
    }
    Some(amax as f64 / SPLIT_RANGE)
}

/// As [`split_row`], writing the digits into three slices (each at least `x.len()`
/// long): the form the kernels use, a plain loop without per-element calls.
pub fn split_into(x: &[f32], hi: &mut [i8], mid: &mut [i8], lo: &mut [i8]) -> Option<f64> {
    let n = x.len();
    let (hi, mid, lo) = (&mut hi[..n], &mut mid[..n], &mut lo[..n]);
    let mut amax = 0.0f32;
    for &v in x {
        let a = if v < 0.0 { -v } else { v };
        if a.is_nan() || a > f32::MAX {
            return None;
        }
        amax = if a > amax { a } else { amax };
    }
    if amax == 0.0 {
        hi.fill(0);
        mid.fill(0);
        lo.fill(0);
        return Some(0.0);
    }
    let inv = SPLIT_RANGE / amax as f64;
    for k in 0..n {
        let t = x[k] as f64 * inv;
        // Round half away from zero; |t| ≤ SPLIT_RANGE < 2²³, so the i32 is exact.
        let q = (t + if t < 0.0 { -0.5 } else { 0.5 }) as i32;
        let l = ((q + 128) & 255) - 128;
        let q1 = (q - l) >> 8;
        let m = ((q1 + 128) & 255) - 128;
        hi[k] = ((q1 - m) >> 8) as i8;
        mid[k] = m as i8;
        lo[k] = l as i8;
    }
    Some(amax as f64 / SPLIT_RANGE)
}

/// Balanced base-256 digits of `|q| ≤ 127 · 2¹⁶`.
#[inline(always)]
pub fn digits(q: i64) -> [i8; 3] {
    let lo = (q + 128).rem_euclid(256) - 128;
    let q1 = (q - lo) >> 8;
    let mid = (q1 + 128).rem_euclid(256) - 128;
    let hi = (q1 - mid) >> 8;
    debug_assert!((-127..=127).contains(&hi), "digit overflow for {q}");
    [hi as i8, mid as i8, lo as i8]
}

/// Combines the three digit sums into the exact `Σ c_k·q_k`.
#[inline(always)]
pub fn combine(hi: i64, mid: i64, lo: i64) -> i64 {
    (hi << 16) + (mid << 8) + lo
}

/// The dot product a split kernel reports for integer sum `d` and scale `s`.
#[inline(always)]
pub fn finish(d: i64, s: f64) -> f32 {
    (d as f64 * s) as f32
}

/// Portable reference: exactly what every split kernel returns for `x · codes`
/// (before the epilogue), or `None` for a non-finite row.
pub fn reference_dot(x: &[f32], codes: &[i8]) -> Option<f32> {
    let mut d = 0i64;
    let s = split_row(x, |k, [h, m, l]| {
        d += codes[k] as i64 * combine(h as i64, m as i64, l as i64);
    })?;
    Some(finish(d, s))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn digits_recombine_exactly_at_the_range_ends() {
        let top = SPLIT_RANGE as i64;
        for q in [-top, -top + 1, -32768, -129, -128, -1, 0, 1, 127, 128, 255, 256, 65535, top - 1, top] {
            let [h, m, l] = digits(q);
            assert_eq!(combine(h as i64, m as i64, l as i64), q);
        }
    }

    #[test]
    fn split_error_is_within_half_a_step() {
        let x = [1.5f32, -0.001, 3.0e-7, -2.75, 0.0];
        let mut q = [0i64; 5];
        let s = split_row(&x, |k, [h, m, l]| q[k] = combine(h as i64, m as i64, l as i64)).unwrap();
        for (k, &v) in x.iter().enumerate() {
            assert!((v as f64 - s * q[k] as f64).abs() <= s * 0.5 * (1.0 + 1e-9), "{k}");
        }
        assert_eq!(q[3], -(SPLIT_RANGE as i64));
    }

    #[test]
    fn both_splitters_agree() {
        let x: std::vec::Vec<f32> = (0..300).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1.37f32.powi(i % 9)).collect();
        let mut d = [std::vec![0i8; 300], std::vec![0i8; 300], std::vec![0i8; 300]];
        let mut e = d.clone();
        let s1 = split_row(&x, |k, dg| (0..3).for_each(|i| d[i][k] = dg[i])).unwrap();
        let [h, m, l] = &mut e;
        let s2 = split_into(&x, h, m, l).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(d, e);
    }

    #[test]
    fn non_finite_rows_have_no_scale() {
        assert!(split_row(&[1.0, f32::NAN], |_, _| {}).is_none());
        assert!(split_row(&[f32::INFINITY], |_, _| {}).is_none());
        assert_eq!(reference_dot(&[0.0, 0.0], &[3, 4]), Some(0.0));
    }
}
