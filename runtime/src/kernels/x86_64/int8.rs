//! x86-64 integer dot products for the int8 path of q8 and q4 linears ([`crate::kernels::int8`]
//! defines the arithmetic; these kernels only produce its exact i32 sums).
//!
//! - AVX2 and AVX-512BW: `vpmaddubsw` multiplies unsigned by signed bytes, so the sign
//!   moves from the weight to the activation: `|w|` (u8; code −128 becomes 128) times
//!   `sign(w) · x` (i8; `|x| ≤ 127`, so the negation cannot overflow). Each i16 lane sums
//!   two products, at most `2 · 128 · 127 = 32512 < 32767`: the saturating add never
//!   saturates. `vpmaddwd` with ones widens pairs to i32.
//! - AVX512-VNNI: `vpdpbusd` sums four u8 × i8 products into i32 without intermediate
//!   saturation, so the activations are offset instead: `(x + 128) · w` (u8 × i8, the
//!   weight untouched), corrected by `128 · Σw` (itself a `vpdpbusd` of ones). The
//!   offset sums may wrap i32 for long rows, but wrapping arithmetic is exact modulo
//!   2³², and the true `Σ x·w` fits (see `INT8_MAX_K`), so the result is exact.
//!
//! Tiles: `MR` activation rows × `NR` weight rows of i32 accumulators, each weight vector
//! loaded once per step and reused across the rows, each activation vector across the
//! weight rows; weights are walked in panels of about 256 KiB so a large batch reuses
//! them from L2. Batches under 4 rows use 1 × 4 tiles (GEMV). Activations are padded to
//! 64 bytes in scratch; weight tails (`K mod 32` or `mod 64`) are copied into a zeroed
//! vector (AVX2) or read with masked loads (AVX-512), so no byte beyond a weight row is
//! read.
//!
//! q4 weights (`dots_q4`): outputs in SIMD lanes (8 per ymm, 16 per zmm), blocks walked in
//! order per lane, so the per-block float accumulation is the reference's bit for bit.
//! Below 4 rows (GEMV) each output's nibbles are decoded per step and its partial sums
//! reduced with the other outputs' by a shuffle tree (`q4_avx2`, `q4_group_avx512`);
//! at AVX-512 from 4 rows on, each group of 16 weight rows is decoded and transposed once
//! into scratch so every row's block sums land in lanes directly (`q4_packed_avx512`;
//! measured 2.7–3.4× the exact q4 path at batch 4–256 on Zen 4). AVX2 batches use the
//! GEMV form (level with the exact path).

use core::arch::x86_64::*;

use crate::graph::Activation;
use crate::kernels::LinearKernel;
use crate::kernels::WeightMatrix;
use crate::kernels::int8::{self, Dots, Epilogue, Q4_PANEL_FLOATS, Quantized};
use crate::quant::{Q4_BLOCK, Q4_BLOCK_BYTES};
use crate::view::{MatMut, MatRef};

/// Target bytes of weight codes per panel.
const PANEL_BYTES: usize = 256 * 1024;

/// Weight rows per panel (a multiple of 4).
fn panel_rows(k: usize) -> usize {
    (PANEL_BYTES / k.max(1)).max(4).div_ceil(4) * 4
}

/// Runs `tile(m0, mr, o0, nr)` over the whole `rows × n` grid: panels of weight rows,
/// then `MR`-row blocks (1 when `rows < 4`), then `NR`-row groups.
#[inline(always)]
fn grid<const MR: usize, const NR: usize>(
    rows: usize,
    n: usize,
    k: usize,
    mut tile: impl FnMut(usize, usize, usize, usize),
) {
    let (mr_max, nr_max) = if rows < 4 { (1, 4) } else { (MR, NR) };
    let panel = panel_rows(k);
    let mut p0 = 0;
    while p0 < n {
        let p1 = (p0 + panel).min(n);
        let mut m0 = 0;
        while m0 < rows {
            let mr = (rows - m0).min(mr_max);
            let mut o0 = p0;
            while o0 < p1 {
                let nr = (p1 - o0).min(nr_max);
                tile(m0, mr, o0, nr);
                o0 += nr;
            }
            m0 += mr;
        }
        p0 = p1;
    }
}

/// Calls `$f::<mr, nr>` (`$f::<mr, nr, C>` for `$f<C>`) for runtime `mr ≤ 4`, `nr ≤ 4`.
macro_rules! dispatch {
    ($f:ident $(<$c:literal>)?, $mr:expr, $nr:expr, $($arg:expr),*) => {
        match ($mr, $nr) {
            (1, 1) => $f::<1, 1 $(, $c)?>($($arg),*),
            (1, 2) => $f::<1, 2 $(, $c)?>($($arg),*),
            (1, 3) => $f::<1, 3 $(, $c)?>($($arg),*),
            (1, 4) => $f::<1, 4 $(, $c)?>($($arg),*),
            (2, 1) => $f::<2, 1 $(, $c)?>($($arg),*),
            (2, 2) => $f::<2, 2 $(, $c)?>($($arg),*),
            (2, 3) => $f::<2, 3 $(, $c)?>($($arg),*),
            (2, 4) => $f::<2, 4 $(, $c)?>($($arg),*),
            (3, 1) => $f::<3, 1 $(, $c)?>($($arg),*),
            (3, 2) => $f::<3, 2 $(, $c)?>($($arg),*),
            (3, 3) => $f::<3, 3 $(, $c)?>($($arg),*),
            (3, 4) => $f::<3, 4 $(, $c)?>($($arg),*),
            (4, 1) => $f::<4, 1 $(, $c)?>($($arg),*),
            (4, 2) => $f::<4, 2 $(, $c)?>($($arg),*),
            (4, 3) => $f::<4, 3 $(, $c)?>($($arg),*),
            (4, 4) => $f::<4, 4 $(, $c)?>($($arg),*),
            _ => unreachable!("int8 tile {}x{}", $mr, $nr),
        }
    };
}

// ---------------------------------------------------------------------------------------
// AVX2

/// Sum of the 8 i32 lanes (exact in any order).
#[inline(always)]
unsafe fn hsum256(v: __m256i) -> i32 {
    // SAFETY: register-only AVX2; the caller guarantees the feature.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

/// One AVX2 tile.
#[inline(always)]
unsafe fn tile_avx2<const MR: usize, const NR: usize>(
    x: &Quantized<'_>,
    m0: usize,
    w: &[i8],
    o0: usize,
    k: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
) {
    // SAFETY: the caller guarantees AVX2, `m0 + MR <= x.rows` and `(o0 + NR) · k <=
    // w.len()`; weight loads stop at `k32 <= k` inside each row (the tail is copied);
    // activation loads read 32-byte blocks below `stride` (a multiple of 64, `>= k`).
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); NR]; MR];
        let k32 = k - k % 32;
        let wp = w.as_ptr().add(o0 * k);
        let xp = x.codes.as_ptr().add(m0 * x.stride);
        let mut kk = 0;
        while kk < k32 {
            let mut wv = [_mm256_setzero_si256(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(wp.add(j * k + kk).cast());
            }
            step_avx2(&mut acc, &wv, xp.add(kk), x.stride);
            kk += 32;
        }
        if k32 < k {
            // The weight tail through a zero-padded copy (AVX2 has no byte-masked load);
            // the activations are zero-padded in scratch already.
            let mut wv = [_mm256_setzero_si256(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                let mut buf = [0i8; 32];
                buf[..k - k32].copy_from_slice(&w[(o0 + j) * k + k32..(o0 + j + 1) * k]);
                *v = _mm256_loadu_si256(buf.as_ptr().cast());
            }
            step_avx2(&mut acc, &wv, xp.add(k32), x.stride);
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, &a) in acc.iter().enumerate() {
                ep.finish(m0 + i, o0 + j, hsum256(a), y);
            }
        }
    }
}

/// One 32-byte step of an AVX2 tile: `acc[i][j] += |w_j| · (sign(w_j) · x_i)` (pairs
/// widened to i32), for activation rows at `xp + i · stride`.
#[inline(always)]
unsafe fn step_avx2<const MR: usize, const NR: usize>(
    acc: &mut [[__m256i; NR]; MR],
    wv: &[__m256i; NR],
    xp: *const i8,
    stride: usize,
) {
    // SAFETY: the caller guarantees AVX2 and 32 readable bytes at each `xp + i · stride`,
    // i < MR.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut wa = [_mm256_setzero_si256(); NR];
        for j in 0..NR {
            wa[j] = _mm256_abs_epi8(wv[j]);
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_si256(xp.add(i * stride).cast());
            for j in 0..NR {
                let sx = _mm256_sign_epi8(xv, wv[j]);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[j], sx), ones);
                acc[j] = _mm256_add_epi32(acc[j], p);
            }
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn dots_avx2(x: &Quantized<'_>, w: &[i8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
    grid::<4, 2>(x.rows, n, k, |m0, mr, o0, nr| {
        // SAFETY: AVX2 per this function's contract; the grid keeps the tile in bounds.
        unsafe { dispatch!(tile_avx2, mr, nr, x, m0, w, o0, k, ep, y) }
    });
}

// ---------------------------------------------------------------------------------------
// AVX-512BW and AVX512-VNNI

/// Lanes `0..n` of a 64-byte mask (`n < 64`).
#[inline(always)]
fn tail_mask(n: usize) -> u64 {
    (1u64 << n) - 1
}

/// One 64-byte step of an AVX-512BW tile: `acc[i][j] += |w_j| · (sign(w_j) · x_i)`
/// (pairs widened to i32), for activation rows at `xp + i · stride`.
#[inline(always)]
unsafe fn step_avx512<const MR: usize, const NR: usize>(
    acc: &mut [[__m512i; NR]; MR],
    wv: &[__m512i; NR],
    xp: *const i8,
    stride: usize,
) {
    // SAFETY: the caller guarantees AVX-512F/BW and 64 readable bytes at each
    // `xp + i · stride`, i < MR.
    unsafe {
        let ones = _mm512_set1_epi16(1);
        let zero = _mm512_setzero_si512();
        let mut wa = [zero; NR];
        let mut neg = [0u64; NR];
        for j in 0..NR {
            wa[j] = _mm512_abs_epi8(wv[j]);
            neg[j] = _mm512_movepi8_mask(wv[j]);
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_si512(xp.add(i * stride).cast());
            for j in 0..NR {
                // AVX-512 has no vpsignb: negate x where w < 0 (where w = 0, |w| = 0).
                let sx = _mm512_mask_sub_epi8(xv, neg[j], zero, xv);
                let p = _mm512_madd_epi16(_mm512_maddubs_epi16(wa[j], sx), ones);
                acc[j] = _mm512_add_epi32(acc[j], p);
            }
        }
    }
}

/// One 64-byte step of a VNNI tile: `acc[i][j] += (x_i + 128) · w_j` and `wsum[j] +=
/// w_j`, four bytes per i32 lane.
#[inline(always)]
unsafe fn step_vnni<const MR: usize, const NR: usize>(
    acc: &mut [[__m512i; NR]; MR],
    wsum: &mut [__m512i; NR],
    wv: &[__m512i; NR],
    xp: *const i8,
    stride: usize,
) {
    // SAFETY: the caller guarantees AVX-512F/BW + VNNI and 64 readable bytes at each
    // `xp + i · stride`, i < MR.
    unsafe {
        let ones = _mm512_set1_epi8(1);
        let offset = _mm512_set1_epi8(i8::MIN);
        for j in 0..NR {
            wsum[j] = _mm512_dpbusd_epi32(wsum[j], ones, wv[j]);
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            // x + 128 as u8 is x with its sign bit flipped.
            let xv = _mm512_xor_si512(_mm512_loadu_si512(xp.add(i * stride).cast()), offset);
            for j in 0..NR {
                acc[j] = _mm512_dpbusd_epi32(acc[j], xv, wv[j]);
            }
        }
    }
}

/// One AVX-512 tile: the AVX-512BW sign trick, or with `VNNI` offset activations and a
/// `Σw` correction.
#[inline(always)]
unsafe fn tile_zmm<const MR: usize, const NR: usize, const VNNI: bool>(
    x: &Quantized<'_>,
    m0: usize,
    w: &[i8],
    o0: usize,
    k: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
) {
    // SAFETY: the caller guarantees AVX-512F/BW (+ VNNI when `VNNI`), `m0 + MR <= x.rows`
    // and `(o0 + NR) · k <= w.len()`. Full weight loads stop at `k64 <= k`; the tail load
    // is masked to the row's last `k - k64` bytes (masked lanes are not accessed).
    // Activation loads read whole 64-byte blocks of a row of `stride >= k64 + 64` bytes
    // when a tail exists.
    unsafe {
        let zero = _mm512_setzero_si512();
        let mut acc = [[zero; NR]; MR];
        let mut wsum = [zero; NR];
        let k64 = k - k % 64;
        let wp = w.as_ptr().add(o0 * k);
        let xp = x.codes.as_ptr().add(m0 * x.stride);
        let mut step = |wv: &[__m512i; NR], at: usize| {
            if VNNI {
                step_vnni(&mut acc, &mut wsum, wv, xp.add(at), x.stride);
            } else {
                step_avx512(&mut acc, wv, xp.add(at), x.stride);
            }
        };
        let mut kk = 0;
        while kk < k64 {
            let mut wv = [zero; NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wp.add(j * k + kk).cast());
            }
            step(&wv, kk);
            kk += 64;
        }
        if k64 < k {
            let mask = tail_mask(k - k64);
            let mut wv = [zero; NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_epi8(mask, wp.add(j * k + k64));
            }
            step(&wv, k64);
        }
        for (j, &s) in wsum.iter().enumerate() {
            // `x + 128` was summed at VNNI: take `128 · Σw` back off (0 otherwise).
            let correction = if VNNI { _mm512_reduce_add_epi32(s).wrapping_mul(128) } else { 0 };
            for (i, acc) in acc.iter().enumerate() {
                let sum = _mm512_reduce_add_epi32(acc[j]).wrapping_sub(correction);
                ep.finish(m0 + i, o0 + j, sum, y);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn dots_avx512(x: &Quantized<'_>, w: &[i8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
    grid::<4, 4>(x.rows, n, k, |m0, mr, o0, nr| {
        // SAFETY: AVX-512F/BW per this function's contract; the grid keeps tiles in bounds.
        unsafe { dispatch!(tile_zmm<false>, mr, nr, x, m0, w, o0, k, ep, y) }
    });
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dots_vnni(x: &Quantized<'_>, w: &[i8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
    grid::<4, 4>(x.rows, n, k, |m0, mr, o0, nr| {
        // SAFETY: AVX-512F/BW + VNNI per this function's contract; tiles in bounds.
        unsafe { dispatch!(tile_zmm<true>, mr, nr, x, m0, w, o0, k, ep, y) }
    });
}

// ---------------------------------------------------------------------------------------
// q4 weights

/// Rows of activations per q4 pass over a group of outputs (the decoded weights of a
/// step are reused across them).
const Q4_MR: usize = 4;

/// Bytes per Q4_0 block (f16 scale, 16 nibble bytes).
const QB: usize = Q4_BLOCK_BYTES;

/// AVX2 q4 dot products: groups of 8 outputs in the lanes of a ymm, one block per step.
/// Per output the 16 nibble bytes are broadcast to both halves, the upper half shifted
/// by 4 and both masked to `0..15` (codes 0–15 of the block, then 16–31: the activation
/// order); `vpmaddubsw` (u8 codes × i8 activations, pairs at most `2 · 15 · 127`, never
/// saturating) and `vpmaddwd` give 8 partial i32 sums per output, a `vphaddd` tree turns
/// the 8 outputs' partials into one vector of block sums `Σ c · xq`, and `8 · Σ xq` is
/// subtracted (exact). The scales of the 8 outputs come from one gather and `vcvtph2ps`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_avx2(x: &Quantized<'_>, w: &[u8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
    let nb = k.div_ceil(Q4_BLOCK);
    let mut o0 = 0;
    while o0 < n {
        let nr = (n - o0).min(8);
        let mut m0 = 0;
        while m0 < x.rows {
            let mr = (x.rows - m0).min(Q4_MR);
            // SAFETY: AVX2/F16C per this function's contract; `o0 + nr <= n` rows of `rb`
            // bytes are in `w`, `m0 + mr <= x.rows`.
            unsafe { q4_group_avx2(x, m0, mr, w, o0, nr, nb, ep, y) };
            m0 += mr;
        }
        o0 += nr;
    }
}

/// One AVX2 q4 group: outputs `o0..o0 + nr` (`nr ≤ 8`) × rows `m0..m0 + mr` (`mr ≤ 4`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn q4_group_avx2(
    x: &Quantized<'_>,
    m0: usize,
    mr: usize,
    w: &[u8],
    o0: usize,
    nr: usize,
    nb: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
) {
    // SAFETY: the caller guarantees AVX2/F16C, `(o0 + nr) · nb · 18 <= w.len()` and `m0 +
    // mr <= x.rows`. Weight reads: 16 nibble bytes at offset 2 and (gathered) 4 bytes at
    // offset 0 of blocks `b < nb` of rows `o0 + j`, `j < nr` (gather lanes `j >= nr` are
    // masked off, so not accessed). Activation reads: 32 bytes at `b · 32 + 32 <= nb · 32
    // <= stride` of rows `m0 + i`.
    unsafe {
        let rb = nb * QB;
        let wp = w.as_ptr().add(o0 * rb);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let offsets = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(rb as i32));
        let gmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr as i32), lanes);
        let shifts = _mm256_setr_epi64x(0, 0, 4, 4);
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); Q4_MR];
        for b in 0..nb {
            let bp = wp.add(b * QB);
            let g = _mm256_mask_i32gather_epi32::<1>(zero, bp.cast(), offsets, gmask);
            let g = _mm256_packus_epi32(_mm256_and_si256(g, _mm256_set1_epi32(0xffff)), zero);
            let d = _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b11_01_10_00>(g)));
            let mut wv = [zero; 8];
            for (j, v) in wv.iter_mut().enumerate().take(nr) {
                let nib = _mm256_broadcastsi128_si256(_mm_loadu_si128(bp.add(j * rb + 2).cast()));
                *v = _mm256_and_si256(_mm256_srlv_epi64(nib, shifts), low);
            }
            for (i, acc) in acc.iter_mut().enumerate().take(mr) {
                let m = m0 + i;
                let xv = _mm256_loadu_si256(x.codes.as_ptr().add(m * x.stride + b * Q4_BLOCK).cast());
                let mut p = [zero; 8];
                for j in 0..8 {
                    p[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(wv[j], xv), ones);
                }
                let r1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
                let r2 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
                let s = _mm256_add_epi32(
                    _mm256_permute2x128_si256::<0x20>(r1, r2),
                    _mm256_permute2x128_si256::<0x31>(r1, r2),
                );
                let s = _mm256_sub_epi32(s, _mm256_set1_epi32(8 * x.bsums(m)[b]));
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s), d));
            }
        }
        for (i, acc) in acc.iter().enumerate().take(mr) {
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), *acc);
            for (j, &v) in out.iter().enumerate().take(nr) {
                ep.finish_q4(m0 + i, o0 + j, v, y);
            }
        }
    }
}

/// AVX-512 q4 dot products (`VNNI`: `vpdpbusd`; else `vpmaddubsw` + `vpmaddwd`, the same
/// exact sums): groups of 16 outputs in the lanes of a zmm, two blocks per step. Per
/// output the nibbles of blocks `b` and `b + 1` are broadcast into the two 256-bit halves
/// and split into codes with one variable shift and a mask (the unsigned codes `0..15`
/// are the u8 operand, the activations the i8 one); a shuffle/add tree turns the 16
/// outputs' 16 partial sums into two vectors of block sums (block `b`, block `b + 1`),
/// and `8 · Σ xq` is subtracted. Scales: one gather per block and `vcvtph2ps`.
#[inline(always)]
unsafe fn q4_avx512<const VNNI: bool>(
    x: &Quantized<'_>,
    w: &[u8],
    n: usize,
    k: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
    panel: &mut [f32],
) {
    let nb = k.div_ceil(Q4_BLOCK);
    let mut o0 = 0;
    while o0 < n {
        let nr = (n - o0).min(16);
        if x.rows >= Q4_PACK_ROWS {
            // SAFETY: as below; `panel` holds `Q4_PANEL_FLOATS · nb` floats (`int8::linear`).
            unsafe { q4_packed_avx512::<VNNI>(x, w, o0, nr, nb, ep, y, panel) };
            o0 += nr;
            continue;
        }
        let mut m0 = 0;
        while m0 < x.rows {
            let mr = (x.rows - m0).min(Q4_MR);
            // SAFETY: the caller guarantees AVX-512F/BW (+ VNNI when `VNNI`); `o0 + nr <=
            // n` rows of `rb` bytes are in `w`, `m0 + mr <= x.rows`.
            unsafe {
                match mr {
                    1 => q4_group_avx512::<VNNI, 1>(x, m0, w, o0, nr, nb, ep, y),
                    2 => q4_group_avx512::<VNNI, 2>(x, m0, w, o0, nr, nb, ep, y),
                    3 => q4_group_avx512::<VNNI, 3>(x, m0, w, o0, nr, nb, ep, y),
                    _ => q4_group_avx512::<VNNI, 4>(x, m0, w, o0, nr, nb, ep, y),
                }
            };
            m0 += mr;
        }
        o0 += nr;
    }
}

/// Batches of at least this many rows repack each group of 16 weight rows once
/// (`q4_packed_avx512`) instead of reducing partial sums per row and block.
const Q4_PACK_ROWS: usize = 4;

/// Output of each lane of a packed group (the transpose leaves outputs in this order).
const PACK_LANES: [usize; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];

/// AVX-512 q4 GEMM for one group of outputs `o0..o0 + nr` (`nr ≤ 16`) and every row: the
/// group's codes are decoded and transposed once into `panel` (per block: 8 vectors
/// whose lane `l` holds 4 consecutive codes of output `PACK_LANES[l]`, then the 16
/// scales), so each row's block sums come out in the lanes of 8 `vpdpbusd` (or
/// `vpmaddubsw` + `vpmaddwd`) with broadcast activations — no horizontal reduction. The
/// sums are exact and the float steps the same, so the bits are those of the reference.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn q4_packed_avx512<const VNNI: bool>(
    x: &Quantized<'_>,
    w: &[u8],
    o0: usize,
    nr: usize,
    nb: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
    panel: &mut [f32],
) {
    // SAFETY: the caller guarantees AVX-512F/BW (+ VNNI when `VNNI`), `(o0 + nr) · nb · 18
    // <= w.len()` and `panel.len() >= Q4_PANEL_FLOATS · nb` (576 bytes per block, written
    // and read below within `b · 576 + 576`). Weight reads: 16 nibble bytes at offset 2
    // and (gathered, lanes of outputs `< nr`) 4 bytes at offset 0 of blocks `< nb` of
    // rows `o0 + j`, `j < nr`. Activation reads: 4 bytes at `b · 32 + 4g + 4 <= 32 · nb <=
    // stride`.
    unsafe {
        let rb = nb * QB;
        let wp = w.as_ptr().add(o0 * rb);
        let pp = panel.as_mut_ptr().cast::<u8>();
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(rb as i32));
        let gmask = _mm512_cmplt_epi32_mask(lanes, _mm512_set1_epi32(nr as i32));
        let shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
        let low = _mm512_set1_epi8(0x0f);
        for b in 0..nb {
            let bp = wp.add(b * QB);
            // r[i]: codes of output i (low 256 bits) and i + 8 (high), as 8 u32 each.
            let mut r = [_mm512_setzero_si512(); 8];
            for (i, r) in r.iter_mut().enumerate() {
                let lo = if i < nr {
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(bp.add(i * rb + 2).cast()))
                } else {
                    _mm256_setzero_si256()
                };
                let hi = if i + 8 < nr {
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(bp.add((i + 8) * rb + 2).cast()))
                } else {
                    _mm256_setzero_si256()
                };
                let nib = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                *r = _mm512_and_si512(_mm512_srlv_epi64(nib, shifts), low);
            }
            // 8 × 8 transpose of u32 in each 256-bit half.
            let t = [
                _mm512_unpacklo_epi32(r[0], r[1]),
                _mm512_unpackhi_epi32(r[0], r[1]),
                _mm512_unpacklo_epi32(r[2], r[3]),
                _mm512_unpackhi_epi32(r[2], r[3]),
                _mm512_unpacklo_epi32(r[4], r[5]),
                _mm512_unpackhi_epi32(r[4], r[5]),
                _mm512_unpacklo_epi32(r[6], r[7]),
                _mm512_unpackhi_epi32(r[6], r[7]),
            ];
            // u[q] (q < 4) / u[4 + q]: u32 `q` of each 128-bit lane of outputs 0–3 / 4–7
            // (and 8–11 / 12–15 in the high half).
            let u = [
                _mm512_unpacklo_epi64(t[0], t[2]),
                _mm512_unpackhi_epi64(t[0], t[2]),
                _mm512_unpacklo_epi64(t[1], t[3]),
                _mm512_unpackhi_epi64(t[1], t[3]),
                _mm512_unpacklo_epi64(t[4], t[6]),
                _mm512_unpackhi_epi64(t[4], t[6]),
                _mm512_unpacklo_epi64(t[5], t[7]),
                _mm512_unpackhi_epi64(t[5], t[7]),
            ];
            let dst = pp.add(b * Q4_PANEL_FLOATS * 4);
            for q in 0..4 {
                // Codes 4q..4q + 3 (128-bit lanes 0, 2) and 16 + 4q.. (lanes 1, 3).
                _mm512_storeu_si512(dst.add(64 * q).cast(), _mm512_shuffle_i32x4::<0x88>(u[q], u[4 + q]));
                _mm512_storeu_si512(dst.add(64 * (q + 4)).cast(), _mm512_shuffle_i32x4::<0xdd>(u[q], u[4 + q]));
            }
            _mm512_storeu_ps(dst.add(512).cast(), scales16(bp, offsets, gmask));
        }
        let mut m0 = 0;
        while m0 < x.rows {
            let mr = (x.rows - m0).min(Q4_MR);
            // SAFETY: as above, rows `m0..m0 + mr` exist.
            match mr {
                1 => q4_packed_rows::<VNNI, 1>(x, m0, pp, nb, o0, nr, ep, y),
                2 => q4_packed_rows::<VNNI, 2>(x, m0, pp, nb, o0, nr, ep, y),
                3 => q4_packed_rows::<VNNI, 3>(x, m0, pp, nb, o0, nr, ep, y),
                _ => q4_packed_rows::<VNNI, 4>(x, m0, pp, nb, o0, nr, ep, y),
            }
            m0 += mr;
        }
    }
}

/// Rows `m0..m0 + MR` against a packed group (`q4_packed_avx512`): `MR` independent
/// `vpdpbusd` chains share each loaded code vector.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn q4_packed_rows<const VNNI: bool, const MR: usize>(
    x: &Quantized<'_>,
    m0: usize,
    pp: *const u8,
    nb: usize,
    o0: usize,
    nr: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
) {
    // SAFETY: the caller guarantees the features, `m0 + MR <= x.rows` and `nb` packed
    // blocks at `pp`; activation reads end at `b · 32 + 32 <= stride`.
    unsafe {
        let ones = _mm512_set1_epi16(1);
        let mut acc = [_mm512_setzero_ps(); MR];
        for b in 0..nb {
            let src = pp.add(b * Q4_PANEL_FLOATS * 4);
            let mut s = [_mm512_setzero_si512(); MR];
            for (i, s) in s.iter_mut().enumerate() {
                *s = _mm512_set1_epi32(-8 * x.bsums(m0 + i)[b]);
            }
            for g in 0..8 {
                let z = _mm512_loadu_si512(src.add(64 * g).cast());
                for (i, s) in s.iter_mut().enumerate() {
                    let xp = x.codes.as_ptr().add((m0 + i) * x.stride + b * Q4_BLOCK + 4 * g);
                    let xb = _mm512_set1_epi32(xp.cast::<i32>().read_unaligned());
                    *s = if VNNI {
                        _mm512_dpbusd_epi32(*s, z, xb)
                    } else {
                        _mm512_add_epi32(*s, _mm512_madd_epi16(_mm512_maddubs_epi16(z, xb), ones))
                    };
                }
            }
            let d = _mm512_loadu_ps(src.add(512).cast());
            for (acc, &s) in acc.iter_mut().zip(&s) {
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_cvtepi32_ps(s), d));
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), *acc);
            for (l, &v) in out.iter().enumerate() {
                if PACK_LANES[l] < nr {
                    ep.finish_q4(m0 + i, o0 + PACK_LANES[l], v, y);
                }
            }
        }
    }
}

/// Block sums of 16 outputs from their per-step partials `p[j]` (lanes 0–7: block `b`,
/// lanes 8–15: block `b + 1`): `(Σ block b, Σ block b + 1)`, output `j` in lane `j`.
#[inline(always)]
unsafe fn reduce16(p: &[__m512i; 16]) -> (__m512i, __m512i) {
    // SAFETY: register-only AVX-512F; the caller guarantees the feature.
    unsafe {
        let zero = _mm512_setzero_si512();
        // Per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] for outputs x = 2j, y = 2j + 1.
        let mut a = [zero; 8];
        for (j, a) in a.iter_mut().enumerate() {
            let (u, v) = (p[2 * j], p[2 * j + 1]);
            *a = _mm512_add_epi32(_mm512_unpacklo_epi32(u, v), _mm512_unpackhi_epi32(u, v));
        }
        // Per 128-bit lane: the lane's sum for outputs 4j..4j + 3.
        let mut q = [zero; 4];
        for (j, q) in q.iter_mut().enumerate() {
            let (u, v) = (a[2 * j], a[2 * j + 1]);
            *q = _mm512_add_epi32(_mm512_unpacklo_epi64(u, v), _mm512_unpackhi_epi64(u, v));
        }
        // Lanes 0+1 are block b, 2+3 block b + 1: [q.b, q.b+1, q'.b, q'.b+1].
        let pair = |u: __m512i, v: __m512i| {
            _mm512_add_epi32(_mm512_shuffle_i32x4::<0x88>(u, v), _mm512_shuffle_i32x4::<0xdd>(u, v))
        };
        let (e01, e23) = (pair(q[0], q[1]), pair(q[2], q[3]));
        (_mm512_shuffle_i32x4::<0x88>(e01, e23), _mm512_shuffle_i32x4::<0xdd>(e01, e23))
    }
}

/// The 16 scales of block `b` (at `bp`, rows `offsets` apart) as f32; lanes outside
/// `mask` 0.
#[inline(always)]
unsafe fn scales16(bp: *const u8, offsets: __m512i, mask: __mmask16) -> __m512 {
    // SAFETY: the caller guarantees AVX-512F and 4 readable bytes at `bp + offsets[j]`
    // for every lane `j` in `mask` (masked lanes are not accessed).
    unsafe {
        let g = _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, offsets, bp.cast());
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g))
    }
}

/// One AVX-512 q4 group: outputs `o0..o0 + nr` (`nr ≤ 16`) × rows `m0..m0 + MR`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn q4_group_avx512<const VNNI: bool, const MR: usize>(
    x: &Quantized<'_>,
    m0: usize,
    w: &[u8],
    o0: usize,
    nr: usize,
    nb: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
) {
    // SAFETY: the caller guarantees AVX-512F/BW (+ VNNI when `VNNI`), `(o0 + nr) · nb · 18
    // <= w.len()` and `m0 + MR <= x.rows`. Weight reads: 16 nibble bytes at offset 2 and
    // (gathered, lanes `j < nr` only) 4 bytes at offset 0 of blocks `< nb` of rows `o0 +
    // j`, `j < nr`. Activation reads: 64 bytes at `b · 32` for even `b < nb`, and `b · 32
    // + 64 <= 32 · (nb + 1) <= stride` because `stride` is `⌈k/64⌉ · 64 >= 32 · nb` and
    // even (in 32s), so at least `32 · (nb + 1)` when `nb` is odd.
    unsafe {
        let rb = nb * QB;
        let wp = w.as_ptr().add(o0 * rb);
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(rb as i32),
        );
        let gmask: __mmask16 = if nr == 16 { 0xffff } else { (1u16 << nr) - 1 };
        let shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
        let low = _mm512_set1_epi8(0x0f);
        let ones = _mm512_set1_epi16(1);
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); MR];
        let mut b = 0;
        while b < nb {
            let two = b + 1 < nb;
            let bp = wp.add(b * QB);
            let d0 = scales16(bp, offsets, gmask);
            let d1 = if two { scales16(bp.add(QB), offsets, gmask) } else { _mm512_setzero_ps() };
            let mut xv = [zero; MR];
            for (i, xv) in xv.iter_mut().enumerate() {
                *xv = _mm512_loadu_si512(x.codes.as_ptr().add((m0 + i) * x.stride + b * Q4_BLOCK).cast());
            }
            // Decode each output's codes once and dot them with every row right away.
            let mut p = [[zero; 16]; MR];
            // `j` indexes output `j`'s partials in every row's `p[i]`.
            #[allow(clippy::needless_range_loop)]
            for j in 0..16 {
                if j < nr {
                    let q = bp.add(j * rb + 2);
                    let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(q.cast()));
                    let hi = if two {
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(q.add(QB).cast()))
                    } else {
                        _mm256_setzero_si256()
                    };
                    let nib = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    let c = _mm512_and_si512(_mm512_srlv_epi64(nib, shifts), low);
                    for i in 0..MR {
                        p[i][j] = if VNNI {
                            _mm512_dpbusd_epi32(zero, c, xv[i])
                        } else {
                            _mm512_madd_epi16(_mm512_maddubs_epi16(c, xv[i]), ones)
                        };
                    }
                }
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let (s0, s1) = reduce16(&p[i]);
                let bs = x.bsums(m0 + i);
                let s0 = _mm512_sub_epi32(s0, _mm512_set1_epi32(8 * bs[b]));
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_cvtepi32_ps(s0), d0));
                if two {
                    let s1 = _mm512_sub_epi32(s1, _mm512_set1_epi32(8 * bs[b + 1]));
                    *acc = _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_cvtepi32_ps(s1), d1));
                }
            }
            b += 2;
        }
        for (i, acc) in acc.iter().enumerate() {
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), *acc);
            for (j, &v) in out.iter().enumerate().take(nr) {
                ep.finish_q4(m0 + i, o0 + j, v, y);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
unsafe fn q4_avx512bw(
    x: &Quantized<'_>,
    w: &[u8],
    n: usize,
    k: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
    panel: &mut [f32],
) {
    // SAFETY: AVX-512F/BW per this function's contract.
    unsafe { q4_avx512::<false>(x, w, n, k, ep, y, panel) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn q4_vnni(
    x: &Quantized<'_>,
    w: &[u8],
    n: usize,
    k: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
    panel: &mut [f32],
) {
    // SAFETY: AVX-512F/BW + VNNI per this function's contract.
    unsafe { q4_avx512::<true>(x, w, n, k, ep, y, panel) }
}

// ---------------------------------------------------------------------------------------
// The kernels

/// Which instructions an [`Int8`] kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx2,
    Avx512,
    Avx512Vnni,
}

/// The int8 linear of one x86-64 level. Constructed only in the statics below; a table
/// hands one out only after `kernels::select` checked its level's features (which
/// include the kernel's: AVX2 ⊂ avx2, AVX-512F/BW ⊂ avx512, + VNNI ⊂ avx512-vnni).
#[derive(Debug)]
pub(crate) struct Int8(Isa);

/// The AVX2 int8 linear (the `avx2` table's).
pub(crate) static AVX2: Int8 = Int8(Isa::Avx2);
/// The AVX-512BW int8 linear (the `avx512` table's).
pub(crate) static AVX512: Int8 = Int8(Isa::Avx512);
/// The AVX512-VNNI int8 linear (the `avx512-vnni` table's).
pub(crate) static AVX512_VNNI: Int8 = Int8(Isa::Avx512Vnni);

impl Int8 {
    /// Whether this CPU runs the kernel (for tests that call it outside a table).
    pub(crate) fn available(&self) -> bool {
        match self.0 {
            Isa::Avx2 => super::cpu_has_avx2(),
            Isa::Avx512 => super::cpu_has_avx512(),
            Isa::Avx512Vnni => super::cpu_has_avx512() && std::is_x86_feature_detected!("avx512vnni"),
        }
    }
}

/// [`int8::quantize_row`] compiled for AVX2 (same bits: see its docs).
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], codes: &mut [i8]) -> Option<f32> {
    int8::quantize_row(x, codes)
}

/// [`int8::quantize_row`] compiled for AVX-512.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512(x: &[f32], codes: &mut [i8]) -> Option<f32> {
    int8::quantize_row(x, codes)
}

impl Dots for Int8 {
    fn quantize(&self, x: &[f32], codes: &mut [i8]) -> Option<f32> {
        // SAFETY: as for `dots` below: the level's features were checked.
        unsafe {
            match self.0 {
                Isa::Avx2 => quantize_avx2(x, codes),
                Isa::Avx512 | Isa::Avx512Vnni => quantize_avx512(x, codes),
            }
        }
    }

    fn dots(&self, x: &Quantized<'_>, w: &[i8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
        debug_assert!(self.available());
        // SAFETY: an `Int8` is reached only through a table handed out after its level's
        // feature check (or through tests that check `available` first); shapes come
        // from `int8::linear` (`w` holds `n · k` codes, `x` has `stride >= k`).
        unsafe {
            match self.0 {
                Isa::Avx2 => dots_avx2(x, w, n, k, ep, y),
                Isa::Avx512 => dots_avx512(x, w, n, k, ep, y),
                Isa::Avx512Vnni => dots_vnni(x, w, n, k, ep, y),
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
        panel: &mut [f32],
    ) {
        debug_assert!(self.available());
        // SAFETY: as for `dots`: the level's features were checked; `w` holds `n` rows of
        // `⌈k/32⌉` blocks and `x` has `stride >= 32 · ⌈k/32⌉` (from `int8::linear`).
        unsafe {
            match self.0 {
                Isa::Avx2 => q4_avx2(x, w, n, k, ep, y),
                Isa::Avx512 => q4_avx512bw(x, w, n, k, ep, y, panel),
                Isa::Avx512Vnni => q4_vnni(x, w, n, k, ep, y, panel),
            }
        }
    }
}

impl LinearKernel for Int8 {
    fn scratch_len(&self, w: &WeightMatrix<'_>, rows: usize) -> usize {
        int8::scratch_len(w, rows)
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
        int8::linear(self, x, w, bias, act, None, y, scratch);
    }

    fn linear_accumulate(&self, x: MatRef<'_>, w: &WeightMatrix<'_>, alpha: f32, y: MatMut<'_>, scratch: &mut [f32]) {
        int8::linear(self, x, w, None, None, Some(alpha), y, scratch);
    }
}
