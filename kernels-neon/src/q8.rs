//! q8 weights × f32 activations through int8 dot-product instructions, exactly.
//!
//! Algorithm: each input row is split into three int8 digit vectors ([`crate::split`]:
//! `x ≈ s·(2¹⁶·hi + 2⁸·mid + lo)`, 23 bits of the row's range) in scratch, once per row
//! and reused for every output. Per output `(m, o)` three integer sums `Σ c·hi`, `Σ c·mid`, `Σ c·lo` over
//! the q8 codes `c` of weight row `o` are accumulated in i32 lanes by one of three
//! instruction paths, the lanes are added (`addv`), the `cols mod 8|16` tail is added in
//! scalar integers, and `D = 2¹⁶·H + 2⁸·M + L` (i64) is the exact `Σ c_k·q_k`. The epilogue
//! receives `f32(f64(D) · s)` and applies the row scale, bias, ReLU or accumulation.
//!
//! - [`IntLevel::Neon`] (baseline): `smull`/`smull2` widen 16 products to i16 and `sadalp`
//!   pairs them into i32 lanes; 1 input row × 4 weight rows per tile.
//! - [`IntLevel::Dotprod`]: `sdot` adds four int8 products per i32 lane (16 MACs per
//!   instruction); 1 × 4 tile, 12 accumulators.
//! - [`IntLevel::I8mm`]: `smmla` multiplies a 2 × 8 by an 8 × 2 int8 block into a 2 × 2
//!   i32 block (32 MACs per instruction). The two input rows of a pair are interleaved in
//!   8-byte groups when they are split; two weight rows are combined from two 8-byte loads
//!   of the mmapped rows (a repacked, pre-interleaved weight layout would save those
//!   `ins`, see the README's trade-off). 2 × 4 tile, 6 accumulators. A lone last row is
//!   paired with zeros, whose results are discarded.
//!
//! Integer sums are exact, so the three paths return bit-identical results and a row's
//! result does not depend on its partner row, its batch or the output split. Accuracy
//! against the f32 reference: see [`crate::split`] (a bound relative to the row's largest
//! activation). A row with a NaN or an infinity is computed by [`crate::linear::gemm_q8`]
//! instead, so it propagates like the reference. `x.cols` must not exceed
//! [`crate::split::MAX_COLS`].

use core::arch::aarch64::*;
use core::arch::asm;

use crate::linear::gemm_q8;
use crate::split::{MAX_COLS, combine, finish, split_into};
use crate::{Epilogue, Mat, MatMut};

/// The int8 instruction path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IntLevel {
    /// `smull` + `sadalp` (every aarch64 CPU).
    Neon,
    /// `sdot` (FEAT_DotProd: Cortex-A55/A76/A78, Neoverse N1, Apple M1 and later).
    Dotprod,
    /// `smmla` (FEAT_I8MM: Cortex-A510/A710/X2, Neoverse V1/N2, Graviton 3).
    I8mm,
}

/// Columns rounded up to the 16-byte vector.
fn padded(cols: usize) -> usize {
    cols.div_ceil(16) * 16
}

/// Bytes of scratch [`gemm_split`] needs for rows of `cols` columns: the digits of two
/// rows, and their pair-interleaved copy for SMMLA.
pub fn scratch_bytes(cols: usize) -> usize {
    12 * padded(cols)
}

/// `y[m, o] = ep(x[m] · codes[o])` through the split-activation integer path.
///
/// `codes` holds `n` rows of `x.cols` q8 codes; pass the weight row scales in
/// `ep.scales`. `scratch` holds at least [`scratch_bytes`]`(x.cols)` bytes.
///
/// Panics if a slice is shorter than its shape says or `x.cols > MAX_COLS`.
///
/// # Safety
/// The CPU must implement the instructions of `level`: FEAT_DotProd for
/// [`IntLevel::Dotprod`], FEAT_I8MM for [`IntLevel::I8mm`] (none for [`IntLevel::Neon`]).
pub unsafe fn gemm_split(
    level: IntLevel,
    x: Mat<'_>,
    codes: &[i8],
    n: usize,
    ep: &Epilogue<'_>,
    mut y: MatMut<'_>,
    scratch: &mut [i8],
) {
    x.check();
    y.check();
    ep.check(n);
    let k = x.cols;
    assert!(k <= MAX_COLS, "split path takes at most {MAX_COLS} columns, got {k}");
    assert!(y.rows >= x.rows && y.cols >= n, "y too small");
    assert!(codes.len() >= n * k, "q8 codes too short");
    let kp = padded(k);
    assert!(scratch.len() >= 12 * kp, "scratch too short");
    let (digits, pairs) = scratch[..12 * kp].split_at_mut(6 * kp);
    let w = Codes { codes, cols: k };
    let step = if level == IntLevel::I8mm { 2 } else { 1 };
    let mut m = 0;
    while m < x.rows {
        let rows = (x.rows - m).min(step);
        // Digits of row r, digit d at (3r + d)·kp; a non-finite row's stay zero so a
        // partner's sums are unaffected, and it is computed by the f32 path below.
        let mut scales = [None; 2];
        for (r, s) in scales.iter_mut().enumerate().take(rows) {
            let (h, rest) = digits[3 * r * kp..].split_at_mut(kp);
            let (md, rest) = rest.split_at_mut(kp);
            *s = split_into(x.row(m + r), h, md, &mut rest[..kp]);
            if s.is_none() {
                digits[3 * r * kp..3 * (r + 1) * kp].fill(0);
            }
        }
        if step == 2 {
            // SMMLA layout: digit d at d·2kp, groups of 8 columns [row a | row b]; a
            // missing second row is zeros.
            if rows == 1 {
                digits[3 * kp..].fill(0);
            }
            for d in 0..3 {
                for g in 0..kp / 8 {
                    for r in 0..2 {
                        let src = (3 * r + d) * kp + 8 * g;
                        pairs[d * 2 * kp + 16 * g + 8 * r..][..8].copy_from_slice(&digits[src..src + 8]);
                    }
                }
            }
        }
        let mut sums = [[0i64; 4]; 2];
        let mut o = 0;
        while o < n {
            let nr = (n - o).min(4);
            // SAFETY: the level's instructions per this function's contract; weight rows
            // o..o+nr exist (codes checked); the digit buffers hold kp ≥ k bytes each.
            unsafe {
                match level {
                    IntLevel::Neon => match nr {
                        1 => neon_tile::<1>(&w, o, digits, kp, &mut sums[0]),
                        2 => neon_tile::<2>(&w, o, digits, kp, &mut sums[0]),
                        3 => neon_tile::<3>(&w, o, digits, kp, &mut sums[0]),
                        _ => neon_tile::<4>(&w, o, digits, kp, &mut sums[0]),
                    },
                    IntLevel::Dotprod => match nr {
                        1 => sdot_tile::<1>(&w, o, digits, kp, &mut sums[0]),
                        2 => sdot_tile::<2>(&w, o, digits, kp, &mut sums[0]),
                        3 => sdot_tile::<3>(&w, o, digits, kp, &mut sums[0]),
                        _ => sdot_tile::<4>(&w, o, digits, kp, &mut sums[0]),
                    },
                    IntLevel::I8mm => match nr {
                        1 => smmla_tile::<1>(&w, o, pairs, kp, &mut sums),
                        2 => smmla_tile::<2>(&w, o, pairs, kp, &mut sums),
                        3 => smmla_tile::<3>(&w, o, pairs, kp, &mut sums),
                        _ => smmla_tile::<4>(&w, o, pairs, kp, &mut sums),
                    },
                }
            }
            for (r, s) in scales.iter().enumerate().take(rows) {
                if let Some(s) = *s {
                    let yrow = y.row_mut(m + r);
                    for j in 0..nr {
                        ep.finish(o + j, finish(sums[r][j], s), &mut yrow[o + j]);
                    }
                }
            }
            o += nr;
        }
        for (r, s) in scales.iter().enumerate().take(rows) {
            if s.is_none() {
                let row = Mat { data: x.row(m + r), rows: 1, cols: k, stride: k };
                let yrow = y.row_mut(m + r);
                gemm_q8(row, codes, n, ep, MatMut { data: yrow, rows: 1, cols: n, stride: n });
            }
        }
        m += rows;
    }
}

struct Codes<'a> {
    codes: &'a [i8],
    cols: usize,
}

/// `Σ codes[c] · dig[c]` over the tail `from..cols` of weight row `o` (scalar, exact).
#[inline(always)]
fn tail(w: &Codes<'_>, o: usize, from: usize, dig: impl Fn(usize) -> i8) -> i64 {
    let row = &w.codes[o * w.cols..(o + 1) * w.cols];
    (from..w.cols).map(|c| row[c] as i64 * dig(c) as i64).sum()
}

/// Baseline tile: 1 row × `NR` weight rows, 16 columns per step (`smull`, `smull2`,
/// `sadalp`).
///
/// # Safety
/// Weight rows `o0..o0+NR` exist; `dig` holds the row's 3 digit vectors of `kp ≥ cols`
/// bytes at 0, kp, 2kp.
#[inline(always)]
unsafe fn neon_tile<const NR: usize>(w: &Codes<'_>, o0: usize, dig: &[i8], kp: usize, sums: &mut [i64; 4]) {
    let k = w.cols;
    let k16 = k - k % 16;
    debug_assert!(dig.len() >= 3 * kp && (o0 + NR) * k <= w.codes.len());
    // SAFETY: loads at c + 16 ≤ k16 ≤ cols inside weight rows o0..o0+NR and inside the
    // three digit vectors (kp ≥ k).
    unsafe {
        let d = dig.as_ptr();
        let mut acc = [[vdupq_n_s32(0); 3]; NR];
        let mut c = 0;
        while c < k16 {
            let a = [vld1q_s8(d.add(c)), vld1q_s8(d.add(kp + c)), vld1q_s8(d.add(2 * kp + c))];
            for (j, accj) in acc.iter_mut().enumerate() {
                let wv = vld1q_s8(w.codes.as_ptr().add((o0 + j) * k + c));
                for (dd, ad) in a.iter().enumerate() {
                    accj[dd] = vpadalq_s16(accj[dd], vmull_s8(vget_low_s8(wv), vget_low_s8(*ad)));
                    accj[dd] = vpadalq_s16(accj[dd], vmull_high_s8(wv, *ad));
                }
            }
            c += 16;
        }
        finish_lanes(&acc, w, o0, k16, |dd, c| dig[dd * kp + c], sums);
    }
}

/// Adds each accumulator's lanes (and the scalar tail `from..cols`, read through
/// `dig(digit, column)`) into the exact sums of weight rows `o0..o0+NR`.
#[inline(always)]
fn finish_lanes<const NR: usize>(
    acc: &[[int32x4_t; 3]; NR],
    w: &Codes<'_>,
    o0: usize,
    from: usize,
    dig: impl Fn(usize, usize) -> i8,
    sums: &mut [i64; 4],
) {
    let mut red = [[0i64; 3]; NR];
    for (r, a) in red.iter_mut().zip(acc) {
        for (v, lanes) in r.iter_mut().zip(a) {
            // SAFETY: register-only NEON (baseline on this target).
            *v = unsafe { vaddvq_s32(*lanes) } as i64;
        }
    }
    if from < w.cols {
        for (j, r) in red.iter_mut().enumerate() {
            for (d, v) in r.iter_mut().enumerate() {
                *v += tail(w, o0 + j, from, |c| dig(d, c));
            }
        }
    }
    for (s, r) in sums.iter_mut().zip(&red) {
        *s = combine(r[0], r[1], r[2]);
    }
}

/// `r += a · b` per 4-byte group (SDOT).
macro_rules! sdot {
    ($r:expr, $a:expr, $b:expr) => {
        asm!("sdot {r:v}.4s, {a:v}.16b, {b:v}.16b", r = inout(vreg) $r, a = in(vreg) $a, b = in(vreg) $b,
            options(pure, nomem, nostack, preserves_flags))
    };
}

/// `r (2×2) += a (2×8) · bᵀ (8×2)` (SMMLA).
macro_rules! smmla {
    ($r:expr, $a:expr, $b:expr) => {
        asm!("smmla {r:v}.4s, {a:v}.16b, {b:v}.16b", r = inout(vreg) $r, a = in(vreg) $a, b = in(vreg) $b,
            options(pure, nomem, nostack, preserves_flags))
    };
}

/// SDOT tile: 1 row × `NR` weight rows, 16 columns per step, `3·NR` accumulators.
///
/// # Safety
/// FEAT_DotProd; bounds as for [`neon_tile`].
#[target_feature(enable = "dotprod")]
unsafe fn sdot_tile<const NR: usize>(w: &Codes<'_>, o0: usize, dig: &[i8], kp: usize, sums: &mut [i64; 4]) {
    let k = w.cols;
    let k16 = k - k % 16;
    debug_assert!(dig.len() >= 3 * kp && (o0 + NR) * k <= w.codes.len());
    // SAFETY: as in `neon_tile`; `sdot` per this function's feature.
    unsafe {
        let d = dig.as_ptr();
        let mut acc = [[vdupq_n_s32(0); 3]; NR];
        let mut c = 0;
        while c < k16 {
            let a = [vld1q_s8(d.add(c)), vld1q_s8(d.add(kp + c)), vld1q_s8(d.add(2 * kp + c))];
            for (j, accj) in acc.iter_mut().enumerate() {
                let wv = vld1q_s8(w.codes.as_ptr().add((o0 + j) * k + c));
                sdot!(accj[0], wv, a[0]);
                sdot!(accj[1], wv, a[1]);
                sdot!(accj[2], wv, a[2]);
            }
            c += 16;
        }
        finish_lanes(&acc, w, o0, k16, |dd, c| dig[dd * kp + c], sums);
    }
}

/// SMMLA tile: 2 interleaved rows × `NR` weight rows (in pairs), 8 columns per step.
///
/// # Safety
/// FEAT_I8MM; weight rows `o0..o0+NR` exist; `pairs` holds 3 pair-interleaved digit
/// blocks of `2·kp` bytes.
#[target_feature(enable = "i8mm")]
unsafe fn smmla_tile<const NR: usize>(w: &Codes<'_>, o0: usize, pairs: &[i8], kp: usize, sums: &mut [[i64; 4]; 2]) {
    let k = w.cols;
    let k8 = k - k % 8;
    debug_assert!(pairs.len() >= 6 * kp && (o0 + NR) * k <= w.codes.len());
    // SAFETY: weight loads at c + 8 ≤ k8 ≤ cols inside rows o0..o0+NR (a missing odd row
    // is a zero vector, not a load); digit loads at 2c + 16 ≤ 2kp; `smmla` per feature.
    unsafe {
        let p = pairs.as_ptr();
        let zero = vdup_n_s8(0);
        let mut acc = [[vdupq_n_s32(0); 3]; 2];
        let mut c = 0;
        while c < k8 {
            let a = [vld1q_s8(p.add(2 * c)), vld1q_s8(p.add(2 * kp + 2 * c)), vld1q_s8(p.add(4 * kp + 2 * c))];
            for (q, accq) in acc.iter_mut().enumerate().take(NR.div_ceil(2)) {
                let w0 = vld1_s8(w.codes.as_ptr().add((o0 + 2 * q) * k + c));
                let w1 = if 2 * q + 1 < NR { vld1_s8(w.codes.as_ptr().add((o0 + 2 * q + 1) * k + c)) } else { zero };
                let wv = vcombine_s8(w0, w1);
                smmla!(accq[0], a[0], wv);
                smmla!(accq[1], a[1], wv);
                smmla!(accq[2], a[2], wv);
            }
            c += 8;
        }
        // Lane 2i + jj of pair q's accumulators holds row i × weight row 2q + jj.
        let mut red = [[[0i64; 3]; 4]; 2];
        for (q, accq) in acc.iter().enumerate().take(NR.div_ceil(2)) {
            let mut lanes = [[0i32; 4]; 3];
            for (l, v) in lanes.iter_mut().zip(accq) {
                vst1q_s32(l.as_mut_ptr(), *v);
            }
            for (i, red_i) in red.iter_mut().enumerate() {
                for jj in 0..2 {
                    if 2 * q + jj < NR {
                        for d in 0..3 {
                            red_i[2 * q + jj][d] = lanes[d][2 * i + jj] as i64;
                        }
                    }
                }
            }
        }
        for (i, red_i) in red.iter_mut().enumerate() {
            if k8 < k {
                for (j, r) in red_i.iter_mut().enumerate().take(NR) {
                    for (d, v) in r.iter_mut().enumerate() {
                        *v += tail(w, o0 + j, k8, |c| pairs[d * 2 * kp + (c / 8) * 16 + i * 8 + c % 8]);
                    }
                }
            }
            for (j, r) in red_i.iter().enumerate().take(NR) {
                sums[i][j] = combine(r[0], r[1], r[2]);
            }
        }
    }
}
