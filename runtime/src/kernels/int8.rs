//! The int8 path of q8 linears: activations quantized per row on the fly, exact int8 ×
//! int8 → i32 dot products, one float epilogue. This module *defines* the arithmetic
//! (the reference every level's int8 kernel matches bit for bit) and runs it in plain
//! loops; the SIMD levels supply only the integer dot products ([`Dots`]).
//!
//! Canonical arithmetic, for input row `x` (length `K`) and q8 weight row `o` (codes
//! `wq`, scale `ws`):
//!
//! 1. `amax = max_k |x_k|`. If any `x_k` is NaN or ±∞ the row is *non-finite* and is
//!    computed by the exact path instead (the scalar reference's dequantize-to-f32 math),
//!    so infinities and NaNs propagate exactly as they would without quantization.
//! 2. `xs = amax / 127` (f32 division). If `xs == 0` (an all-zero row, or `amax` below
//!    `127 · 2⁻¹⁴⁹`), every code is 0. Otherwise `xq_k = round_half_even(clamp(x_k / xs,
//!    −127, 127))` — clamping first is the same as clamping after, since ±127 are integers.
//! 3. `sum = Σ_k xq_k · wq_k` in i32: exact. With `|xq| ≤ 127` and `|wq| ≤ 128` (a
//!    hostile file may hold code −128) every partial sum is at most `16256 · K`, below
//!    `2³¹` for `K ≤` [`INT8_MAX_K`] `= 2¹⁷`; longer rows take the exact path. Because the
//!    sum is exact, its order (lanes, tiles, SDOT/VNNI groups) cannot change it.
//! 4. `y = (sum as f32) · (xs · ws) + bias`, then the activation (unfused, in this order);
//!    for adapter steps `y += alpha · ((sum as f32) · (xs · ws))`.
//!
//! Accuracy against the exact path (weights dequantized, activations not): step 2 moves
//! each activation by at most `xs / 2` (plus `amax · 2⁻²³` from the rounding of `xs`), so
//! `|y_int8 − y_exact| ≤ ws · (xs / 2) · (1 + 2⁻²⁰) · Σ_k |wq_k|` plus the f32 rounding of
//! both paths (`≈ K · 2⁻²⁴ · Σ|x·w|` for the exact one; the int8 epilogue rounds 3 times).

use super::scalar::Scalar;
use super::{LinearKernel, WeightData, WeightMatrix, activation};
use crate::graph::Activation;
use crate::view::{MatMut, MatRef};

/// Longest reduction the int8 path takes: `127 · 128 · 2¹⁷ < 2³¹`, so no i32 sum can
/// overflow. Longer q8 rows use the exact path.
pub const INT8_MAX_K: usize = 1 << 17;

/// Shortest reduction the session sends to the int8 path ([`super::Kernels::linear_for`]).
/// Below it the per-output work (horizontal sum, epilogue) outweighs the dot product and
/// the exact path is as fast or faster (measured: K = 64 is break-even, K = 13–32 up to
/// 10× slower at batch 256); the choice depends only on the weight, never on the batch.
pub const INT8_MIN_K: usize = 128;

/// Activation codes of a row are padded with zeros to a multiple of this many bytes, so
/// SIMD kernels load whole vectors of activations (weights are never padded: they are the
/// mapped file).
pub(crate) const PAD: usize = 64;

/// Bytes between quantized activation rows for a reduction of length `k`.
pub(crate) fn stride(k: usize) -> usize {
    k.div_ceil(PAD) * PAD
}

/// Quantizes one activation row into `codes[..x.len()]` (step 1–2 of the module docs);
/// returns the row scale, or `None` for a non-finite row (codes then all 0).
///
/// Inlined so a level can compile it for its instruction set ([`Dots::quantize`]): every
/// step is exact or correctly rounded IEEE arithmetic, so vectorizing cannot change it.
#[inline(always)]
pub(crate) fn quantize_row(x: &[f32], codes: &mut [i8]) -> Option<f32> {
    let codes = &mut codes[..x.len()];
    // |x| as bits: for non-NaN floats the order of the bit patterns is the order of the
    // values, and every NaN or infinity is at least 0x7f80_0000 — one integer max (which
    // vectorizes) gives both the maximum and the finiteness test.
    let bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    if bits >= 0x7f80_0000 {
        codes.fill(0);
        return None;
    }
    let xs = f32::from_bits(bits) / 127.0;
    if xs == 0.0 {
        codes.fill(0);
        return Some(0.0);
    }
    // 1.5 · 2²³: adding and subtracting it rounds |v| < 2²² to the nearest integer, ties
    // to even (the default IEEE mode), exactly as `rintf`, `cvtps2dq` and `fcvtns` do.
    const ROUND: f32 = 12_582_912.0;
    for (c, &v) in codes.iter_mut().zip(x) {
        let r = ((v / xs).clamp(-127.0, 127.0) + ROUND) - ROUND;
        *c = r as i8;
    }
    Some(xs)
}

/// Activation rows of one call, quantized (into the caller's scratch).
pub(crate) struct Quantized<'s> {
    /// `rows × stride` codes, zero beyond each row's `k`.
    pub codes: &'s [i8],
    /// Bytes between rows (a multiple of [`PAD`]).
    pub stride: usize,
    /// Rows.
    pub rows: usize,
}

impl Quantized<'_> {
    /// Codes of row `m` (`stride` bytes).
    #[inline(always)]
    pub fn row(&self, m: usize) -> &[i8] {
        &self.codes[m * self.stride..(m + 1) * self.stride]
    }
}

/// Step 4 of the module docs for output `(m, o)` of one call.
pub(crate) struct Epilogue<'a> {
    /// Weight row scales of this call's rows.
    ws: &'a [f32],
    /// Activation row scales; NaN marks a non-finite row (left to the exact path).
    xs: &'a [f32],
    bias: Option<&'a [f32]>,
    act: Option<Activation>,
    accumulate: Option<f32>,
}

impl Epilogue<'_> {
    /// Finishes the exact integer sum of output `(m, o)` into `y`.
    #[inline(always)]
    pub fn finish(&self, m: usize, o: usize, sum: i32, y: &mut MatMut<'_>) {
        let xs = self.xs[m];
        if xs.is_nan() {
            return;
        }
        let v = sum as f32 * (xs * self.ws[o]);
        let dst = &mut y.row_mut(m)[o];
        *dst = match self.accumulate {
            Some(alpha) => *dst + alpha * v,
            None => {
                let v = v + self.bias.map_or(0.0, |b| b[o]);
                match self.act {
                    None => v,
                    Some(Activation::Relu) => activation::relu(v),
                    Some(a) => activation::apply(a, v),
                }
            }
        };
    }
}

/// The integer dot products of one level: for every activation row `m` and weight row
/// `o < n` (codes `w[o·k..(o+1)·k]`), `ep.finish(m, o, Σ_k xq·wq, y)` with the exact sum.
pub(crate) trait Dots {
    /// [`quantize_row`], which a level may override only to compile it for its own
    /// instruction set (the result must be the same bits).
    fn quantize(&self, x: &[f32], codes: &mut [i8]) -> Option<f32> {
        quantize_row(x, codes)
    }

    /// Runs every `(m, o)` of the call.
    fn dots(&self, x: &Quantized<'_>, w: &[i8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>);
}

/// Floats of scratch an int8 linear needs (codes, row scales, and one dequantized weight
/// row for non-finite rows and for weights the int8 path does not take).
pub(crate) fn scratch_len(w: &WeightMatrix<'_>, rows: usize) -> usize {
    match w.data {
        WeightData::Q8 { .. } if w.cols <= INT8_MAX_K => (rows * stride(w.cols)).div_ceil(4) + rows + w.cols,
        _ => w.cols,
    }
}

/// Runs a q8 linear (or adapter step, with `accumulate`) on the int8 path with `dots`.
/// Weights it does not cover (not q8, or rows longer than [`INT8_MAX_K`]; the session
/// never sends them) and non-finite activation rows take the scalar exact path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    dots: &impl Dots,
    x: MatRef<'_>,
    w: &WeightMatrix<'_>,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    accumulate: Option<f32>,
    mut y: MatMut<'_>,
    scratch: &mut [f32],
) {
    let exact = |x: MatRef<'_>, y: MatMut<'_>, scratch: &mut [f32]| match accumulate {
        Some(alpha) => Scalar.linear_accumulate(x, w, alpha, y, scratch),
        None => Scalar.linear(x, w, bias, act, y, scratch),
    };
    let (codes, scales) = match w.data {
        WeightData::Q8 { codes, scales } if w.cols <= INT8_MAX_K => (codes, scales),
        _ => return exact(x, y, scratch),
    };
    let (rows, k) = (x.rows(), w.cols);
    let stride = stride(k);
    let (qbytes, rest) = scratch.split_at_mut((rows * stride).div_ceil(4));
    let (xs, rest) = rest.split_at_mut(rows);
    // SAFETY: `qbytes` is an exclusively borrowed run of at least `rows · stride` bytes
    // (4 per float); i8 has alignment 1 and no invalid bit patterns; the new slice lives
    // no longer than the borrow of `qbytes` it replaces.
    let q: &mut [i8] = unsafe { core::slice::from_raw_parts_mut(qbytes.as_mut_ptr().cast::<i8>(), rows * stride) };
    let mut non_finite = false;
    for m in 0..rows {
        let row = &mut q[m * stride..(m + 1) * stride];
        row[k..].fill(0);
        xs[m] = dots.quantize(x.row(m), row).unwrap_or_else(|| {
            non_finite = true;
            f32::NAN
        });
    }
    let xq = Quantized { codes: q, stride, rows };
    let ep = Epilogue { ws: &scales[..w.rows], xs, bias, act, accumulate };
    dots.dots(&xq, &codes[..w.rows * k], w.rows, k, &ep, &mut y);
    if non_finite {
        for m in (0..rows).filter(|&m| xs[m].is_nan()) {
            exact(x.rows_range(m..m + 1), y.reborrow().into_rows_range(m..m + 1), rest);
        }
    }
}

/// The reference dot products: sequential i32 sums.
pub(crate) struct ReferenceDots;

impl Dots for ReferenceDots {
    fn dots(&self, x: &Quantized<'_>, w: &[i8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
        for o in 0..n {
            let wr = &w[o * k..(o + 1) * k];
            for m in 0..x.rows {
                let sum = x.row(m)[..k].iter().zip(wr).fold(0i32, |s, (&a, &b)| s + a as i32 * b as i32);
                ep.finish(m, o, sum, y);
            }
        }
    }
}

/// The int8 reference kernel (the scalar level's int8 linear).
#[derive(Debug)]
pub(crate) struct Reference;

impl LinearKernel for Reference {
    fn scratch_len(&self, w: &WeightMatrix<'_>, rows: usize) -> usize {
        scratch_len(w, rows)
    }

    fn linear(
        &self,
        x: MatRef<'_>,
        w: &WeightMatrix<'_>,
        bias: Option<&[f32]>,
        act: Option<Activation>,
        y: MatMut<'_>,
        scratch: &mut [f32],
    ) {
        linear(&ReferenceDots, x, w, bias, act, None, y, scratch);
    }

    fn linear_accumulate(&self, x: MatRef<'_>, w: &WeightMatrix<'_>, alpha: f32, y: MatMut<'_>, scratch: &mut [f32]) {
        linear(&ReferenceDots, x, w, None, None, Some(alpha), y, scratch);
    }
}
