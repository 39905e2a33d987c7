//! int8 activations × q8 weights → exact i32 sums, for graft's int8 q8 path (the runtime
//! quantizes each activation row to one int8 digit and finishes each sum with its own
//! epilogue; this module only produces the sums).
//!
//! Unlike [`crate::q8`], which splits f32 activations into three digits to stay within an
//! f32 tolerance, the caller here has already rounded activations to int8, so one SDOT or
//! SMMLA per weight vector does the work of three. The sums are exact: `|x| ≤ 127` (the
//! caller's codes) and `|w| ≤ 128`, so with `k ≤` [`crate::split::MAX_COLS`] no partial
//! sum reaches 2³¹, whatever the instruction or order — both paths give the same integers.
//!
//! - [`IntLevel::Dotprod`]: 1 row × 4 weight rows, 16 columns per step, one `sdot` each.
//! - [`IntLevel::I8mm`]: 2 rows × 4 weight rows; per 8 columns the two rows' 8-byte groups
//!   and two weight rows' groups are combined and multiplied by one `smmla` into a 2 × 2
//!   block. A lone last row runs the SDOT tile (FEAT_I8MM CPUs have FEAT_DotProd, which
//!   is mandatory from Armv8.4).
//!
//! Column tails (`k mod 16` or `mod 8`) are added in scalar integers.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::q8::IntLevel;
use crate::split::MAX_COLS;

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

/// Calls `finish(m, o, Σ_c x[m·stride + c] · codes[o·k + c])` for every row `m < rows`
/// and weight row `o < n`, with the exact i32 sum.
///
/// `x` holds `rows` rows of int8 activation codes in `[−127, 127]`, `stride ≥ k` apart;
/// `codes` holds `n` rows of `k` q8 codes (any i8, −128 included).
///
/// Panics if a slice is shorter than its shape says, `stride < k`, `k > MAX_COLS`, or
/// `level` is [`IntLevel::Neon`].
///
/// # Safety
/// The CPU must implement FEAT_DotProd, and for [`IntLevel::I8mm`] also FEAT_I8MM.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_i8(
    level: IntLevel,
    x: &[i8],
    rows: usize,
    stride: usize,
    codes: &[i8],
    n: usize,
    k: usize,
    mut finish: impl FnMut(usize, usize, i32),
) {
    assert!(level != IntLevel::Neon, "gemm_i8 needs SDOT or SMMLA");
    assert!(k <= MAX_COLS && stride >= k, "gemm_i8: k {k}, stride {stride}");
    assert!(rows == 0 || x.len() >= (rows - 1) * stride + k, "gemm_i8: activations too short");
    assert!(codes.len() >= n * k, "gemm_i8: codes too short");
    let mut m = 0;
    while m < rows {
        let pair = level == IntLevel::I8mm && m + 1 < rows;
        let mut o = 0;
        while o < n {
            let nr = (n - o).min(4);
            let mut sums = [[0i32; 4]; 2];
            // SAFETY: the features per this function's contract; rows m (and m + 1 for a
            // pair) and weight rows o..o+nr exist (checked above).
            unsafe {
                if pair {
                    match nr {
                        1 => smmla_tile::<1>(x, m, stride, codes, o, k, &mut sums),
                        2 => smmla_tile::<2>(x, m, stride, codes, o, k, &mut sums),
                        3 => smmla_tile::<3>(x, m, stride, codes, o, k, &mut sums),
                        _ => smmla_tile::<4>(x, m, stride, codes, o, k, &mut sums),
                    }
                } else {
                    match nr {
                        1 => sdot_tile::<1>(x, m, stride, codes, o, k, &mut sums[0]),
                        2 => sdot_tile::<2>(x, m, stride, codes, o, k, &mut sums[0]),
                        3 => sdot_tile::<3>(x, m, stride, codes, o, k, &mut sums[0]),
                        _ => sdot_tile::<4>(x, m, stride, codes, o, k, &mut sums[0]),
                    }
                }
            }
            for (r, s) in sums.iter().enumerate().take(if pair { 2 } else { 1 }) {
                for (j, &v) in s.iter().enumerate().take(nr) {
                    finish(m + r, o + j, v);
                }
            }
            o += nr;
        }
        m += if pair { 2 } else { 1 };
    }
}

/// `Σ x[c] · w[c]` over `from..k` in plain integers.
#[inline(always)]
fn tail(x: &[i8], w: &[i8], from: usize, k: usize) -> i32 {
    x[from..k].iter().zip(&w[from..k]).fold(0i32, |s, (&a, &b)| s + a as i32 * b as i32)
}

/// SDOT tile: row `m` × weight rows `o0..o0+NR`.
///
/// # Safety
/// FEAT_DotProd; the rows exist (checked by `gemm_i8`).
#[target_feature(enable = "dotprod")]
unsafe fn sdot_tile<const NR: usize>(
    x: &[i8],
    m: usize,
    stride: usize,
    codes: &[i8],
    o0: usize,
    k: usize,
    sums: &mut [i32; 4],
) {
    let k16 = k - k % 16;
    let xr = &x[m * stride..m * stride + k];
    // SAFETY: loads at c + 16 ≤ k16 ≤ k inside the activation row and weight rows
    // o0..o0+NR; `sdot` per this function's feature.
    unsafe {
        let mut acc = [vdupq_n_s32(0); NR];
        let mut c = 0;
        while c < k16 {
            let xv = vld1q_s8(xr.as_ptr().add(c));
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = vld1q_s8(codes.as_ptr().add((o0 + j) * k + c));
                sdot!(*a, wv, xv);
            }
            c += 16;
        }
        for (j, a) in acc.iter().enumerate() {
            let w = &codes[(o0 + j) * k..(o0 + j + 1) * k];
            sums[j] = vaddvq_s32(*a) + tail(xr, w, k16, k);
        }
    }
}

/// SMMLA tile: rows `m, m+1` × weight rows `o0..o0+NR` (in pairs).
///
/// # Safety
/// FEAT_I8MM; the rows exist (checked by `gemm_i8`).
#[target_feature(enable = "i8mm")]
unsafe fn smmla_tile<const NR: usize>(
    x: &[i8],
    m: usize,
    stride: usize,
    codes: &[i8],
    o0: usize,
    k: usize,
    sums: &mut [[i32; 4]; 2],
) {
    let k8 = k - k % 8;
    let (xa, xb) = (&x[m * stride..m * stride + k], &x[(m + 1) * stride..(m + 1) * stride + k]);
    // SAFETY: 8-byte loads at c + 8 ≤ k8 ≤ k inside both activation rows and weight rows
    // o0..o0+NR (a missing odd weight row is a zero vector, not a load); `smmla` per this
    // function's feature.
    unsafe {
        let zero = vdup_n_s8(0);
        let mut acc = [vdupq_n_s32(0); 2];
        let mut c = 0;
        while c < k8 {
            let a = vcombine_s8(vld1_s8(xa.as_ptr().add(c)), vld1_s8(xb.as_ptr().add(c)));
            for (q, accq) in acc.iter_mut().enumerate().take(NR.div_ceil(2)) {
                let w0 = vld1_s8(codes.as_ptr().add((o0 + 2 * q) * k + c));
                let w1 = if 2 * q + 1 < NR { vld1_s8(codes.as_ptr().add((o0 + 2 * q + 1) * k + c)) } else { zero };
                smmla!(*accq, a, vcombine_s8(w0, w1));
            }
            c += 8;
        }
        // Lane 2i + jj of pair q holds row m+i × weight row o0 + 2q + jj.
        for (q, accq) in acc.iter().enumerate().take(NR.div_ceil(2)) {
            let mut lanes = [0i32; 4];
            vst1q_s32(lanes.as_mut_ptr(), *accq);
            for (i, xr) in [xa, xb].into_iter().enumerate() {
                for jj in 0..2 {
                    let j = 2 * q + jj;
                    if j < NR {
                        let w = &codes[(o0 + j) * k..(o0 + j + 1) * k];
                        sums[i][j] = lanes[2 * i + jj] + tail(xr, w, k8, k);
                    }
                }
            }
        }
    }
}
