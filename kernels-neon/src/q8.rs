//! q8 weights × f32 activations through int8 dot-product instructions, exactly.
//!
//! Algorithm: each input row is split into three int8 digit vectors ([`crate::split`]:
//! `x ≈ s·(2¹⁶·hi + 2⁸·mid + lo)`, 23 bits of the row's range) in scratch, zero-padded to
//! 16 columns. Per output `(m, o)` three integer sums `Σ c·hi`, `Σ c·mid`, `Σ c·lo` over
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
use crate::split::{MAX_COLS, combine, finish, split_row};
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

/// Bytes of scratch [`gemm_split`] needs for rows of `cols` columns.
pub fn scratch_bytes(cols: usize) -> usize {
    6 * padded(cols)
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
    assert!(scratch.len() >= 6 * kp, "scratch too short");
    let scratch = &mut scratch[..6 * kp];
    let w = Codes { codes, cols: k };
    let step = if level == IntLevel::I8mm { 2 } else { 1 };
    let mut m = 0;
    while m < x.rows {
        let pair = step == 2 && m + 1 < x.rows;
        scratch.fill(0);
        let mut scales = [None; 2];
        for (r, s) in scales.iter_mut().enumerate().take(if pair { 2 } else { 1 }) {
            *s = if step == 2 {
                // Pair layout: digit d at d·2kp, groups of 8 columns [row a | row b].
                split_row(x.row(m + r), |c, dg| {
                    for (d, &v) in dg.iter().enumerate() {
                        scratch[d * 2 * kp + (c / 8) * 16 + r * 8 + c % 8] = v;
                    }
                })
            } else {
                split_row(x.row(m), |c, dg| {
                    for (d, &v) in dg.iter().enumerate() {
                        scratch[d * kp + c] = v;
                    }
                })
            };
        }
        if scales.iter().take(if pair { 2 } else { 1 }).any(Option::is_none) && pair {
            // Zero the digits of a non-finite row so its partner's sums stay exact.
            for (r, s) in scales.iter().enumerate() {
                if s.is_none() {
                    for d in 0..3 {
                        for c in 0..k {
                            scratch[d * 2 * kp + (c / 8) * 16 + r * 8 + c % 8] = 0;
                        }
                    }
                }
            }
        }
        let mut sums = [[0i64; 4]; 2];
        let mut o = 0;
        while o < n {
            let nr = (n - o).min(4);
            // SAFETY: the level's instructions per this function's contract; weight rows
            // o..o+nr exist (codes checked), scratch holds the digit layout of `level`.
            unsafe {
                match level {
                    IntLevel::Neon => neon_tile(&w, o, nr, scratch, kp, &mut sums[0]),
                    IntLevel::Dotprod => sdot_tile(&w, o, nr, scratch, kp, &mut sums[0]),
                    IntLevel::I8mm => smmla_tile(&w, o, nr, scratch, kp, &mut sums),
                }
            }
            for (r, s) in scales.iter().enumerate().take(if pair { 2 } else { 1 }) {
                if let Some(s) = *s {
                    let yrow = y.row_mut(m + r);
                    for j in 0..nr {
                        ep.finish(o + j, finish(sums[r][j], s), &mut yrow[o + j]);
                    }
                }
            }
            o += nr;
        }
        for (r, s) in scales.iter().enumerate().take(if pair { 2 } else { 1 }) {
            if s.is_none() {
                let row = Mat { data: x.row(m + r), rows: 1, cols: k, stride: k };
                let yrow = y.row_mut(m + r);
                gemm_q8(row, codes, n, ep, MatMut { data: yrow, rows: 1, cols: n, stride: n });
            }
        }
        m += if pair { 2 } else { 1 };
    }
}

struct Codes<'a> {
    codes: &'a [i8],
    cols: usize,
}

impl Codes<'_> {
    #[inline(always)]
    fn row(&self, o: usize) -> &[i8] {
        &self.codes[o * self.cols..(o + 1) * self.cols]
    }
}

/// Adds the scalar tail `from..cols` of weight row `o` with digit vectors read by `dig`.
#[inline(always)]
fn tail(w: &Codes<'_>, o: usize, from: usize, dig: impl Fn(usize, usize) -> i8) -> [i64; 3] {
    let row = w.row(o);
    let mut t = [0i64; 3];
    for (c, &code) in row.iter().enumerate().skip(from) {
        for (d, s) in t.iter_mut().enumerate() {
            *s += code as i64 * dig(d, c) as i64;
        }
    }
    t
}

/// Baseline tile: 1 row × `nr ≤ 4` weight rows, 16 columns per step.
///
/// # Safety
/// Weight rows `o0..o0+nr` exist; `dig` holds 3 digit rows of `kp` bytes.
#[inline(never)]
unsafe fn neon_tile(w: &Codes<'_>, o0: usize, nr: usize, dig: &[i8], kp: usize, sums: &mut [i64; 4]) {
    let k = w.cols;
    let k16 = k - k % 16;
    // SAFETY: loads at c + 16 ≤ k16 ≤ cols inside weight rows o0..o0+nr and inside the
    // three digit rows (kp ≥ k).
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 3]; 4];
        let mut c = 0;
        while c < k16 {
            let a = [
                vld1q_s8(dig.as_ptr().add(c)),
                vld1q_s8(dig.as_ptr().add(kp + c)),
                vld1q_s8(dig.as_ptr().add(2 * kp + c)),
            ];
            for (j, accj) in acc.iter_mut().enumerate().take(nr) {
                let wv = vld1q_s8(w.codes.as_ptr().add((o0 + j) * k + c));
                for d in 0..3 {
                    accj[d] = vpadalq_s16(accj[d], vmull_s8(vget_low_s8(wv), vget_low_s8(a[d])));
                    accj[d] = vpadalq_s16(accj[d], vmull_high_s8(wv, a[d]));
                }
            }
            c += 16;
        }
        for (j, accj) in acc.iter().enumerate().take(nr) {
            let t = tail(w, o0 + j, k16, |d, c| dig[d * kp + c]);
            let s = |d: usize| vaddvq_s32(accj[d]) as i64 + t[d];
            sums[j] = combine(s(0), s(1), s(2));
        }
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

/// SDOT tile: 1 row × `nr ≤ 4` weight rows, 16 columns per step, 12 accumulators.
///
/// # Safety
/// FEAT_DotProd; bounds as for [`neon_tile`].
#[target_feature(enable = "dotprod")]
unsafe fn sdot_tile(w: &Codes<'_>, o0: usize, nr: usize, dig: &[i8], kp: usize, sums: &mut [i64; 4]) {
    let k = w.cols;
    let k16 = k - k % 16;
    // SAFETY: as in `neon_tile`; `sdot` per this function's feature.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 3]; 4];
        let mut c = 0;
        while c < k16 {
            let a = [
                vld1q_s8(dig.as_ptr().add(c)),
                vld1q_s8(dig.as_ptr().add(kp + c)),
                vld1q_s8(dig.as_ptr().add(2 * kp + c)),
            ];
            for (j, accj) in acc.iter_mut().enumerate().take(nr) {
                let wv = vld1q_s8(w.codes.as_ptr().add((o0 + j) * k + c));
                sdot!(accj[0], wv, a[0]);
                sdot!(accj[1], wv, a[1]);
                sdot!(accj[2], wv, a[2]);
            }
            c += 16;
        }
        for (j, accj) in acc.iter().enumerate().take(nr) {
            let t = tail(w, o0 + j, k16, |d, c| dig[d * kp + c]);
            let s = |d: usize| vaddvq_s32(accj[d]) as i64 + t[d];
            sums[j] = combine(s(0), s(1), s(2));
        }
    }
}

/// SMMLA tile: 2 interleaved rows × `nr ≤ 4` weight rows (two pairs), 8 columns per step.
///
/// # Safety
/// FEAT_I8MM; weight rows `o0..o0+nr` exist; `dig` holds 3 pair-interleaved digit
/// blocks of `2·kp` bytes.
#[target_feature(enable = "i8mm")]
unsafe fn smmla_tile(w: &Codes<'_>, o0: usize, nr: usize, dig: &[i8], kp: usize, sums: &mut [[i64; 4]; 2]) {
    let k = w.cols;
    let k8 = k - k % 8;
    let pairs = nr.div_ceil(2);
    // SAFETY: weight loads at c + 8 ≤ k8 ≤ cols inside rows o0..o0+nr (a missing odd row
    // is a zero vector, not a load); digit loads at 2c + 16 ≤ 2kp; `smmla` per feature.
    unsafe {
        let zero = vdup_n_s8(0);
        let mut acc = [[vdupq_n_s32(0); 3]; 2];
        let mut c = 0;
        while c < k8 {
            let a = [
                vld1q_s8(dig.as_ptr().add(2 * c)),
                vld1q_s8(dig.as_ptr().add(2 * kp + 2 * c)),
                vld1q_s8(dig.as_ptr().add(4 * kp + 2 * c)),
            ];
            for (p, accp) in acc.iter_mut().enumerate().take(pairs) {
                let w0 = vld1_s8(w.codes.as_ptr().add((o0 + 2 * p) * k + c));
                let w1 = if 2 * p + 1 < nr { vld1_s8(w.codes.as_ptr().add((o0 + 2 * p + 1) * k + c)) } else { zero };
                let wv = vcombine_s8(w0, w1);
                smmla!(accp[0], a[0], wv);
                smmla!(accp[1], a[1], wv);
                smmla!(accp[2], a[2], wv);
            }
            c += 8;
        }
        for (p, accp) in acc.iter().enumerate().take(pairs) {
            let mut lanes = [[0i32; 4]; 3];
            for d in 0..3 {
                vst1q_s32(lanes[d].as_mut_ptr(), accp[d]);
            }
            // Lane 2i + j holds row i (of the pair) × weight row j (of the weight pair).
            for i in 0..2 {
                for jj in 0..2 {
                    let j = 2 * p + jj;
                    if j >= nr {
                        continue;
                    }
                    let t = tail(w, o0 + j, k8, |d, c| dig[d * 2 * kp + (c / 8) * 16 + i * 8 + c % 8]);
                    let s = |d: usize| lanes[d][2 * i + jj] as i64 + t[d];
                    sums[i][j] = combine(s(0), s(1), s(2));
                }
            }
        }
    }
}
