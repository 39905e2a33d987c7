//! The int8 path of q8 and q4 linears: activations quantized per row on the fly, exact int8 ×
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
//!
//! **q4 weights** (ggml Q4_0: blocks of 32 nibble codes `c` with an f16 scale `d_b`, value
//! `(c − 8) · d_b`) share steps 1–2 and replace 3–4, for weight row `o` with blocks
//! `b = 0..⌈K/32⌉`:
//!
//! 3. `s_b = Σ_{k in block b, k < K} (c_k − 8) · xq_k` in i32: exact (`|s_b| ≤ 32 · 8 · 127`,
//!    so also exact as f32). The codes a padded last block stores beyond `K` meet
//!    activation codes 0 and contribute nothing, whatever they are.
//! 4. `acc = 0; for b in order: acc = acc + f32(s_b) · d_b` — a multiply, then an add
//!    (two roundings, no FMA, so every level needs only plain SIMD float arithmetic); then
//!    `y = acc · xs + bias` and the activation, or `y += alpha · (acc · xs)`.
//!
//! The blocks are accumulated strictly in order per output, so a kernel with outputs in
//! SIMD lanes and blocks walked sequentially gives the same bits. Accuracy: with `d_b`
//! exact (decoded f16), step 2 moves each activation by at most `xs/2 · (1 + 2⁻¹⁵)` (the
//! rounding of `x / xs` near a midpoint and of `xs` itself; plus `2⁻¹⁴³` when `xs` is
//! subnormal), so
//! `|y_int8 − y_exact| ≤ (xs/2) · (1 + 2⁻¹⁵) · Σ_b |d_b| · Σ_{k in b} |c_k − 8|` plus the f32
//! rounding of both paths (the int8 one rounds twice per block and twice in the epilogue:
//! `≈ (⌈K/32⌉ + 2) · 2⁻²⁴ · Σ_b |s_b · d_b| · xs`). The NEON levels have no q4 int8
//! kernel: their q4 linears stay on the exact path.

use super::scalar::Scalar;
use super::{LinearKernel, WeightData, WeightMatrix, activation};
use crate::graph::Activation;
use crate::quant::{self, Q4_BLOCK, Q4_BLOCK_BYTES};
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
    /// For q4 weights, `rows × blocks` sums of each row's codes per 32-code block
    /// (`Σ xq` over the block, exact), which turn `Σ c · xq` into `Σ (c − 8) · xq`;
    /// empty for q8. (Read by the x86-64 kernels only: the reference sums `c − 8`.)
    #[cfg_attr(not(all(feature = "std", target_arch = "x86_64")), allow(dead_code))]
    pub bsums: &'s [i32],
    /// q4 blocks per row (`⌈K/32⌉`; 0 for q8).
    #[cfg_attr(not(all(feature = "std", target_arch = "x86_64")), allow(dead_code))]
    pub blocks: usize,
}

impl Quantized<'_> {
    /// Codes of row `m` (`stride` bytes).
    #[inline(always)]
    pub fn row(&self, m: usize) -> &[i8] {
        &self.codes[m * self.stride..(m + 1) * self.stride]
    }

    /// Block sums of row `m` (q4 only).
    #[cfg_attr(not(all(feature = "std", target_arch = "x86_64")), allow(dead_code))]
    #[inline(always)]
    pub fn bsums(&self, m: usize) -> &[i32] {
        &self.bsums[m * self.blocks..(m + 1) * self.blocks]
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
    /// Finishes the exact integer sum of q8 output `(m, o)` into `y` (step 4).
    #[inline(always)]
    pub fn finish(&self, m: usize, o: usize, sum: i32, y: &mut MatMut<'_>) {
        let xs = self.xs[m];
        if xs.is_nan() {
            return;
        }
        self.store(m, o, sum as f32 * (xs * self.ws[o]), y);
    }

    /// Finishes the block accumulator `acc = Σ_b f32(s_b) · d_b` of q4 output `(m, o)`
    /// into `y` (q4 step 4).
    #[inline(always)]
    pub fn finish_q4(&self, m: usize, o: usize, acc: f32, y: &mut MatMut<'_>) {
        let xs = self.xs[m];
        if xs.is_nan() {
            return;
        }
        self.store(m, o, acc * xs, y);
    }

    /// Bias and activation, or the adapter accumulation, of the product `v`.
    #[inline(always)]
    fn store(&self, m: usize, o: usize, v: f32, y: &mut MatMut<'_>) {
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

    /// The q4 counterpart: for every `(m, o < n)` (weight row `o` = the Q4_0 blocks
    /// `w[o·rb..(o+1)·rb]`, `rb = ⌈k/32⌉ · 18`), `ep.finish_q4(m, o, acc, y)` with `acc`
    /// accumulated exactly as q4 step 4 of the module docs says. Defaults to the
    /// reference loops (levels without q4 kernels: the session never sends them q4,
    /// [`super::Level::has_q4_int8`], but a direct call still gets the defined bits).
    /// `panel` is scratch of [`Q4_PANEL_FLOATS`] per block for a level's repacked weights.
    #[allow(clippy::too_many_arguments)]
    fn dots_q4(
        &self,
        x: &Quantized<'_>,
        w: &[u8],
        n: usize,
        k: usize,
        ep: &Epilogue<'_>,
        y: &mut MatMut<'_>,
        panel: &mut [f32],
    ) {
        ReferenceDots.dots_q4(x, w, n, k, ep, y, panel);
    }
}

/// Floats of scratch per q4 block that a level may use to repack 16 weight rows for
/// batches (16 · 32 codes and 16 f32 scales).
pub(crate) const Q4_PANEL_FLOATS: usize = (16 * Q4_BLOCK) / 4 + 16;

/// Floats of scratch an int8 linear needs (codes, row scales, q4 block sums and repack
/// panel, and one
/// dequantized weight row for non-finite rows and for weights the int8 path does not
/// take).
pub(crate) fn scratch_len(w: &WeightMatrix<'_>, rows: usize) -> usize {
    let codes = (rows * stride(w.cols)).div_ceil(4) + rows;
    match w.data {
        WeightData::Q8 { .. } if w.cols <= INT8_MAX_K => codes + w.cols,
        WeightData::Q4(_) if w.cols <= INT8_MAX_K => {
            codes + (rows + Q4_PANEL_FLOATS) * w.cols.div_ceil(Q4_BLOCK) + w.cols
        }
        _ => w.cols,
    }
}

/// Runs a q8 or q4 linear (or adapter step, with `accumulate`) on the int8 path with
/// `dots`. Weights it does not cover (other formats, or rows longer than
/// [`INT8_MAX_K`]; the session never sends them) and non-finite activation rows take the
/// scalar exact path.
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
    let (rows, k) = (x.rows(), w.cols);
    /// The weight codes the int8 path takes.
    enum Codes<'a> {
        Q8(&'a [i8], &'a [f32]),
        Q4(&'a [u8]),
    }
    let (wcodes, blocks) = match w.data {
        WeightData::Q8 { codes, scales } if k <= INT8_MAX_K => (Codes::Q8(codes, scales), 0),
        WeightData::Q4(data) if k <= INT8_MAX_K => (Codes::Q4(data), k.div_ceil(Q4_BLOCK)),
        _ => return exact(x, y, scratch),
    };
    let stride = stride(k);
    let (qbytes, rest) = scratch.split_at_mut((rows * stride).div_ceil(4));
    let (xs, rest) = rest.split_at_mut(rows);
    let (bsums, rest) = rest.split_at_mut(rows * blocks);
    let (panel, rest) = rest.split_at_mut(Q4_PANEL_FLOATS * blocks);
    // SAFETY: `qbytes` is an exclusively borrowed run of at least `rows · stride` bytes
    // (4 per float); i8 has alignment 1 and no invalid bit patterns; the new slice lives
    // no longer than the borrow of `qbytes` it replaces.
    let q: &mut [i8] = unsafe { core::slice::from_raw_parts_mut(qbytes.as_mut_ptr().cast::<i8>(), rows * stride) };
    // SAFETY: as above: f32 and i32 have the same size and alignment, and every bit
    // pattern is a valid i32.
    let bsums: &mut [i32] = unsafe { core::slice::from_raw_parts_mut(bsums.as_mut_ptr().cast::<i32>(), bsums.len()) };
    let mut non_finite = false;
    for m in 0..rows {
        let row = &mut q[m * stride..(m + 1) * stride];
        row[k..].fill(0);
        xs[m] = dots.quantize(x.row(m), row).unwrap_or_else(|| {
            non_finite = true;
            f32::NAN
        });
        for (s, c) in bsums[m * blocks..(m + 1) * blocks].iter_mut().zip(row.chunks_exact(Q4_BLOCK)) {
            *s = c.iter().map(|&v| v as i32).sum();
        }
    }
    let xq = Quantized { codes: q, stride, rows, bsums, blocks };
    match wcodes {
        Codes::Q8(codes, scales) => {
            let ep = Epilogue { ws: &scales[..w.rows], xs, bias, act, accumulate };
            dots.dots(&xq, &codes[..w.rows * k], w.rows, k, &ep, &mut y);
        }
        Codes::Q4(data) => {
            let ep = Epilogue { ws: &[], xs, bias, act, accumulate };
            dots.dots_q4(&xq, &data[..w.rows * blocks * Q4_BLOCK_BYTES], w.rows, k, &ep, &mut y, panel);
        }
    }
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

    fn dots_q4(
        &self,
        x: &Quantized<'_>,
        w: &[u8],
        n: usize,
        k: usize,
        ep: &Epilogue<'_>,
        y: &mut MatMut<'_>,
        _panel: &mut [f32],
    ) {
        let rb = k.div_ceil(Q4_BLOCK) * Q4_BLOCK_BYTES;
        for o in 0..n {
            let wr = &w[o * rb..(o + 1) * rb];
            for m in 0..x.rows {
                let xr = x.row(m);
                let mut acc = 0.0f32;
                for (b, block) in wr.chunks_exact(Q4_BLOCK_BYTES).enumerate() {
                    let k0 = b * Q4_BLOCK;
                    let s = (0..Q4_BLOCK.min(k - k0))
                        .fold(0i32, |s, j| s + (quant::q4_code(block, j) as i32 - 8) * xr[k0 + j] as i32);
                    acc += s as f32 * quant::q4_scale(block);
                }
                ep.finish_q4(m, o, acc, y);
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
