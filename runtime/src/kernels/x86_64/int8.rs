//! x86-64 integer dot products for the int8 path of q8 linears ([`crate::kernels::int8`]
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

use core::arch::x86_64::*;

use crate::graph::Activation;
use crate::kernels::LinearKernel;
use crate::kernels::WeightMatrix;
use crate::kernels::int8::{self, Dots, Epilogue, Quantized};
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

/// Calls `$f::<mr, nr>` for runtime `mr ≤ 4`, `nr ≤ 4`.
macro_rules! dispatch {
    ($f:ident, $mr:expr, $nr:expr, $($arg:expr),*) => {
        match ($mr, $nr) {
            (1, 1) => $f::<1, 1>($($arg),*),
            (1, 2) => $f::<1, 2>($($arg),*),
            (1, 3) => $f::<1, 3>($($arg),*),
            (1, 4) => $f::<1, 4>($($arg),*),
            (2, 1) => $f::<2, 1>($($arg),*),
            (2, 2) => $f::<2, 2>($($arg),*),
            (2, 3) => $f::<2, 3>($($arg),*),
            (2, 4) => $f::<2, 4>($($arg),*),
            (3, 1) => $f::<3, 1>($($arg),*),
            (3, 2) => $f::<3, 2>($($arg),*),
            (3, 3) => $f::<3, 3>($($arg),*),
            (3, 4) => $f::<3, 4>($($arg),*),
            (4, 1) => $f::<4, 1>($($arg),*),
            (4, 2) => $f::<4, 2>($($arg),*),
            (4, 3) => $f::<4, 3>($($arg),*),
            (4, 4) => $f::<4, 4>($($arg),*),
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

/// One AVX-512BW tile (sign trick on zmm).
#[inline(always)]
unsafe fn tile_avx512<const MR: usize, const NR: usize>(
    x: &Quantized<'_>,
    m0: usize,
    w: &[i8],
    o0: usize,
    k: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
) {
    // SAFETY: the caller guarantees AVX-512F/BW, `m0 + MR <= x.rows` and `(o0 + NR) · k
    // <= w.len()`. Full weight loads stop at `k64 <= k`; the tail load is masked to the
    // row's last `k - k64` bytes (masked lanes are not accessed). Activation loads read
    // whole 64-byte blocks of a row of `stride >= k64 + 64` bytes when a tail exists.
    unsafe {
        let zero = _mm512_setzero_si512();
        let mut acc = [[zero; NR]; MR];
        let k64 = k - k % 64;
        let wp = w.as_ptr().add(o0 * k);
        let xp = x.codes.as_ptr().add(m0 * x.stride);
        let mut kk = 0;
        while kk < k64 {
            let mut wv = [zero; NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wp.add(j * k + kk).cast());
            }
            step_avx512(&mut acc, &wv, xp.add(kk), x.stride);
            kk += 64;
        }
        if k64 < k {
            let mask = tail_mask(k - k64);
            let mut wv = [zero; NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_epi8(mask, wp.add(j * k + k64));
            }
            step_avx512(&mut acc, &wv, xp.add(k64), x.stride);
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, &a) in acc.iter().enumerate() {
                ep.finish(m0 + i, o0 + j, _mm512_reduce_add_epi32(a), y);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn dots_avx512(x: &Quantized<'_>, w: &[i8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
    grid::<4, 4>(x.rows, n, k, |m0, mr, o0, nr| {
        // SAFETY: AVX-512F/BW per this function's contract; the grid keeps tiles in bounds.
        unsafe { dispatch!(tile_avx512, mr, nr, x, m0, w, o0, k, ep, y) }
    });
}

/// One AVX512-VNNI tile (offset activations, `Σw` correction).
#[inline(always)]
unsafe fn tile_vnni<const MR: usize, const NR: usize>(
    x: &Quantized<'_>,
    m0: usize,
    w: &[i8],
    o0: usize,
    k: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
) {
    // SAFETY: as for `tile_avx512`, with AVX512-VNNI also guaranteed by the caller.
    unsafe {
        let zero = _mm512_setzero_si512();
        let mut acc = [[zero; NR]; MR];
        let mut wsum = [zero; NR];
        let k64 = k - k % 64;
        let wp = w.as_ptr().add(o0 * k);
        let xp = x.codes.as_ptr().add(m0 * x.stride);
        let mut kk = 0;
        while kk < k64 {
            let mut wv = [zero; NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wp.add(j * k + kk).cast());
            }
            step_vnni(&mut acc, &mut wsum, &wv, xp.add(kk), x.stride);
            kk += 64;
        }
        if k64 < k {
            let mask = tail_mask(k - k64);
            let mut wv = [zero; NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_epi8(mask, wp.add(j * k + k64));
            }
            step_vnni(&mut acc, &mut wsum, &wv, xp.add(k64), x.stride);
        }
        for (j, &s) in wsum.iter().enumerate() {
            let correction = _mm512_reduce_add_epi32(s).wrapping_mul(128);
            for (i, acc) in acc.iter().enumerate() {
                let sum = _mm512_reduce_add_epi32(acc[j]).wrapping_sub(correction);
                ep.finish(m0 + i, o0 + j, sum, y);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dots_vnni(x: &Quantized<'_>, w: &[i8], n: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
    grid::<4, 4>(x.rows, n, k, |m0, mr, o0, nr| {
        // SAFETY: AVX-512F/BW + VNNI per this function's contract; tiles in bounds.
        unsafe { dispatch!(tile_vnni, mr, nr, x, m0, w, o0, k, ep, y) }
    });
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
