//! AVX-512 linear layers: the AVX2 design (see `x86_64::linear`) with 16-lane vectors,
//! 32 vector registers and masked tails.
//!
//! Canonical arithmetic at this level: for output (m, o), lane `l` (0..16) accumulates
//! `fma(w[o, 16c + l], x[m, 16c + l], acc)` for c = 0, 1, …; the last partial vector is
//! loaded under a mask (absent lanes are zero in both operands and add nothing); the 16
//! lanes are summed in a fixed tree ([`hsum16`]); then the AVX2 kernel's epilogue (q8 row
//! scale, bias, activation). `w` is the same value as at every level: the exact f16/bf16
//! widening, the q4 product `(code − 8) · d`, the q8 code. Every path (GEMV straight from
//! the stored weights, GEMM over a dequantized panel) keeps that order, so a row's result
//! does not depend on its batch.
//!
//! q4 decoding: a block's 16 nibble bytes are widened to 16 dword lanes once; `vpermps`
//! over a 16-entry table of `(c − 8) · d` (built with one multiply per block) turns the
//! low nibbles into weights directly — it reads only the low 4 bits of each index — and a
//! 4-bit shift does the same for the high nibbles. No mask, no integer-to-float
//! conversion and no scale multiply per weight; the scale comes from the AVX2 kernel's
//! table of widened f16s (a scalar load folded into the table multiply). That is about 7
//! vector operations per 32 weights, half of them on the shuffle ports, which bounds a
//! batch-1 q4 GEMV at roughly 0.55–0.65 of one core's streaming read on Zen 4 (which runs
//! 512-bit operations on 256-bit units): q4 in exact f32 arithmetic is decode-bound, not
//! memory-bound. Reaching the bandwidth needs integer activations (q4 codes × int8 `x` in
//! `vpdpbusd`), which changes the arithmetic and belongs with the int8 path.
//!
//! Short reductions (`K ≤ SMALL_K`) run the AVX2 kernel's outputs-in-lanes path: AVX2
//! code runs on every AVX-512 CPU, the choice depends only on `K`, and a LoRA step with
//! `K = rank` gains nothing from wider vectors. Q8-rowwise weights (not a linear format)
//! go to the reference, as at AVX2.

use core::arch::x86_64::*;

use super::super::linear::{
    self as avx2, Bf16Rows, Epilogue, F16Rows, F32Rows, Q4Rows, Q8Rows, Tiles, drive, f16_table, level_linear, store,
    with_loader,
};
// Scratch: the same panels as the AVX2 kernel.
pub(super) use super::super::linear::scratch_len;
use crate::graph::Activation;
use crate::kernels::{WeightData, WeightMatrix};
use crate::quant::{Q4_BLOCK, Q4_BLOCK_BYTES};
use crate::view::{MatMut, MatRef};

/// Reads 16 consecutive dequantized weights of one row.
trait Loader {
    /// Weights `o, k..k+16` (`k` is a multiple of 16, `k + 16 <= cols`).
    ///
    /// # Safety
    /// AVX-512F/BW/VL and F16C must be available and the indices in bounds.
    unsafe fn load16(&self, o: usize, k: usize) -> __m512;

    /// Weights `o, k..k+n` (`k` a multiple of 16, `n < 16`, `k + n <= cols`) in the low
    /// lanes, zeros above.
    ///
    /// # Safety
    /// As for `load16`; lanes at and above `n` are not read (or read inside the row).
    unsafe fn load_masked(&self, o: usize, k: usize, n: usize) -> __m512;

    /// Whether [`Loader::load32`] decodes a whole block at once (cheaper than two
    /// `load16`s), so tiles should step 32 columns at a time.
    const BLOCKS: bool = false;

    /// Weights `o, k..k+32` as two vectors, the same values as two `load16`s.
    ///
    /// # Safety
    /// As for `load16`, with `k + 32 <= cols`.
    #[inline(always)]
    unsafe fn load32(&self, o: usize, k: usize) -> [__m512; 2] {
        // SAFETY: forwarded.
        unsafe { [self.load16(o, k), self.load16(o, k + 16)] }
    }
}

/// The mask of the low `n` lanes.
#[inline(always)]
fn low(n: usize) -> u16 {
    debug_assert!(n < 16);
    (1u16 << n) - 1
}

// The AVX2 kernel's row loaders, read 16 lanes at a time.

impl Loader for F32Rows<'_> {
    #[inline(always)]
    unsafe fn load16(&self, o: usize, k: usize) -> __m512 {
        debug_assert!(o * self.stride + k + 16 <= self.data.len());
        // SAFETY: in bounds per the caller; unaligned load.
        unsafe { _mm512_loadu_ps(self.data.as_ptr().add(o * self.stride + k)) }
    }

    #[inline(always)]
    unsafe fn load_masked(&self, o: usize, k: usize, n: usize) -> __m512 {
        debug_assert!(o * self.stride + k + n <= self.data.len());
        // SAFETY: lanes below `n` are in the row; masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(low(n), self.data.as_ptr().add(o * self.stride + k)) }
    }
}

impl Loader for F16Rows<'_> {
    #[inline(always)]
    unsafe fn load16(&self, o: usize, k: usize) -> __m512 {
        debug_assert!(o * self.cols + k + 16 <= self.data.len());
        // SAFETY: in bounds per the caller; exact F16C widening.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(self.data.as_ptr().add(o * self.cols + k).cast())) }
    }

    #[inline(always)]
    unsafe fn load_masked(&self, o: usize, k: usize, n: usize) -> __m512 {
        // SAFETY: as for `load16`; masked-off halves are not read and widen to +0.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(low(n), self.data.as_ptr().add(o * self.cols + k).cast())) }
    }
}

/// bf16 → f32 is a 16-bit shift of the bits.
#[inline(always)]
unsafe fn widen_bf16(h: __m256i) -> __m512 {
    // SAFETY: register-only AVX-512F.
    unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))) }
}

impl Loader for Bf16Rows<'_> {
    #[inline(always)]
    unsafe fn load16(&self, o: usize, k: usize) -> __m512 {
        debug_assert!(o * self.cols + k + 16 <= self.data.len());
        // SAFETY: in bounds per the caller.
        unsafe { widen_bf16(_mm256_loadu_si256(self.data.as_ptr().add(o * self.cols + k).cast())) }
    }

    #[inline(always)]
    unsafe fn load_masked(&self, o: usize, k: usize, n: usize) -> __m512 {
        // SAFETY: as for `load16`; masked-off halves are not read.
        unsafe { widen_bf16(_mm256_maskz_loadu_epi16(low(n), self.data.as_ptr().add(o * self.cols + k).cast())) }
    }
}

impl Loader for Q8Rows<'_> {
    #[inline(always)]
    unsafe fn load16(&self, o: usize, k: usize) -> __m512 {
        debug_assert!(o * self.cols + k + 16 <= self.codes.len());
        // SAFETY: in bounds per the caller; 16 codes in one 128-bit load.
        unsafe {
            let q = _mm_loadu_si128(self.codes.as_ptr().add(o * self.cols + k).cast());
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))
        }
    }

    #[inline(always)]
    unsafe fn load_masked(&self, o: usize, k: usize, n: usize) -> __m512 {
        // SAFETY: as for `load16`; masked-off bytes are not read.
        unsafe {
            let q = _mm_maskz_loadu_epi8(low(n), self.codes.as_ptr().add(o * self.cols + k).cast());
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))
        }
    }
}

/// `(c − 8)` for c = 0..16, the table every q4 block scales by its `d`.
#[inline(always)]
pub(super) unsafe fn q4_table() -> __m512 {
    // SAFETY: register-only.
    unsafe { _mm512_setr_ps(-8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0) }
}

/// The table `(c − 8) · d` of a q4 block and its 16 nibble bytes widened to dword lanes
/// (the low nibble of lane `j` is element `j`, the high nibble element `16 + j`).
///
/// # Safety
/// AVX-512F and F16C must be available; `p` must point at 18 readable bytes.
#[inline(always)]
pub(super) unsafe fn q4_block(p: *const u8) -> (__m512, __m512i) {
    // SAFETY: per the contract; the product is the scalar `(c − 8) as f32 * d`.
    unsafe {
        let d = _mm512_cvtph_ps(_mm256_set1_epi16(u16::from_le_bytes([*p, *p.add(1)]) as i16));
        let table = _mm512_mul_ps(q4_table(), d);
        (table, _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(2).cast())))
    }
}

impl Q4Rows<'_> {
    #[inline(always)]
    fn block(&self, o: usize, k: usize) -> *const u8 {
        let start = o * self.row_bytes + (k / Q4_BLOCK) * Q4_BLOCK_BYTES;
        debug_assert!(start + Q4_BLOCK_BYTES <= self.data.len(), "q4 block out of range");
        self.data.as_ptr().wrapping_add(start)
    }
}

impl Loader for Q4Rows<'_> {
    const BLOCKS: bool = true;

    #[inline(always)]
    unsafe fn load16(&self, o: usize, k: usize) -> __m512 {
        // SAFETY: the block's 18 bytes lie inside row `o` (caller); `vpermps` reads the low 4 bits of each
        // index, so the high half only needs its nibble shifted down.
        unsafe {
            let (table, bytes) = q4_block(self.block(o, k));
            let idx = if k.is_multiple_of(Q4_BLOCK) { bytes } else { _mm512_srli_epi32::<4>(bytes) };
            _mm512_permutexvar_ps(idx, table)
        }
    }

    #[inline(always)]
    unsafe fn load_masked(&self, o: usize, k: usize, n: usize) -> __m512 {
        // SAFETY: rows hold whole blocks, so the full half-block is inside the row.
        unsafe { _mm512_maskz_mov_ps(low(n), self.load16(o, k)) }
    }

    #[inline(always)]
    unsafe fn load32(&self, o: usize, k: usize) -> [__m512; 2] {
        debug_assert!(k.is_multiple_of(Q4_BLOCK));
        let p = self.block(o, k);
        // SAFETY: the block's 18 bytes lie inside row `o` (caller); the table's entries are
        // the exact widenings, so the products are the scalar `(c − 8) as f32 * d`.
        unsafe {
            let d = self.f16[u16::from_le_bytes([*p, *p.add(1)]) as usize];
            let table = _mm512_mul_ps(q4_table(), _mm512_set1_ps(d));
            let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(2).cast()));
            [_mm512_permutexvar_ps(bytes, table), _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(bytes), table)]
        }
    }
}

/// Sums the 16 lanes in a fixed order: the two 256-bit halves lane by lane, then the
/// AVX2 kernel's 8-lane tree.
#[inline(always)]
pub(super) unsafe fn hsum16(v: __m512) -> f32 {
    // SAFETY: register-only; the caller guarantees AVX-512F.
    unsafe {
        let h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
        avx2::hsum(h)
    }
}

/// One `MR × NR` tile: `out[i][j] = x[m0+i] · w[o0+j]` in canonical order (no bias).
// Index loops over the register tile read clearer than zipped iterators here.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize, L: Loader>(
    x: &MatRef<'_>,
    m0: usize,
    w: &L,
    o0: usize,
    k: usize,
    out: &mut [[f32; NR]; MR],
) {
    // SAFETY: the caller guarantees AVX-512, `m0 + MR <= x.rows`, `o0 + NR <= w rows`
    // and `k == x.cols`; every load below stays inside those rows (the tail is masked).
    unsafe {
        let mut xp = [core::ptr::null::<f32>(); MR];
        for (i, p) in xp.iter_mut().enumerate() {
            *p = x.row(m0 + i).as_ptr();
        }
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        let k16 = k - k % 16;
        let mut kk = 0;
        if L::BLOCKS {
            // A block of each weight row is decoded once and used by every input row;
            // each lane still sees columns 16c + l in order.
            while kk + 32 <= k16 {
                for j in 0..NR {
                    let [a, b] = w.load32(o0 + j, kk);
                    for i in 0..MR {
                        acc[i][j] = _mm512_fmadd_ps(a, _mm512_loadu_ps(xp[i].add(kk)), acc[i][j]);
                        acc[i][j] = _mm512_fmadd_ps(b, _mm512_loadu_ps(xp[i].add(kk + 16)), acc[i][j]);
                    }
                }
                kk += 32;
            }
        }
        while kk < k16 {
            let mut wv = [_mm512_setzero_ps(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = w.load16(o0 + j, kk);
            }
            for i in 0..MR {
                let xv = _mm512_loadu_ps(xp[i].add(kk));
                for j in 0..NR {
                    acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
                }
            }
            kk += 16;
        }
        if kk < k {
            let n = k - kk;
            let mut wv = [_mm512_setzero_ps(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = w.load_masked(o0 + j, kk, n);
            }
            for i in 0..MR {
                let xv = _mm512_maskz_loadu_ps(low(n), xp[i].add(kk));
                for j in 0..NR {
                    acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
                }
            }
        }
        for i in 0..MR {
            for j in 0..NR {
                out[i][j] = hsum16(acc[i][j]);
            }
        }
    }
}

// Batches of 4 or more: 4 × 4 tiles over f32 panels. Fewer rows, straight from the
// stored weights: one row against 8 weight rows (more concurrent weight streams and
// independent accumulators keep a memory-bound GEMV fed), else 3 × 4.
#[rustfmt::skip]
level_linear!(
    Avx512, "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c",
    panel: (4, 4),
    gemv: { 1 => (1, 8), _ => (3, 4) },
    tiles: [
        (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8),
        (2, 1), (2, 2), (2, 3), (2, 4),
        (3, 1), (3, 2), (3, 3), (3, 4),
        (4, 1), (4, 2), (4, 3), (4, 4),
    ],
);

/// `out[..k]` = row `r` of `l` (masked stores for the tail).
#[inline(always)]
unsafe fn expand<L: Loader>(l: &L, r: usize, k: usize, out: &mut [f32]) {
    let out = &mut out[..k];
    let k16 = k - k % 16;
    let p = out.as_mut_ptr();
    let mut c = 0;
    // SAFETY: stores are at c + 16 <= k16 or masked to c + (k − c) = k = out.len();
    // loads stay in row `r`; features per the caller.
    unsafe {
        if L::BLOCKS {
            while c + 32 <= k16 {
                let [a, b] = l.load32(r, c);
                _mm512_storeu_ps(p.add(c), a);
                _mm512_storeu_ps(p.add(c + 16), b);
                c += 32;
            }
        }
        while c < k16 {
            _mm512_storeu_ps(p.add(c), l.load16(r, c));
            c += 16;
        }
        if c < k {
            _mm512_mask_storeu_ps(p.add(c), low(k - c), l.load_masked(r, c, k - c));
        }
    }
}

#[cfg(test)]
mod tests {
    /// The q4 table lookup gives exactly the scalar dequantization for every code and a
    /// spread of scales (including subnormal and negative ones).
    #[test]
    fn q4_decode_is_exact() {
        if !super::super::super::cpu_has_avx512() {
            return;
        }
        for bits in [0x3c00u16, 0x0001, 0x8123, 0x7bff, 0x2e66, 0xc500] {
            let mut block = [0u8; 18];
            block[..2].copy_from_slice(&bits.to_le_bytes());
            for (j, b) in block[2..].iter_mut().enumerate() {
                *b = (j as u8) | (((15 - j) as u8) << 4);
            }
            let rows = super::Q4Rows { data: &block, row_bytes: 18, f16: super::f16_table() };
            let d = crate::quant::q4_scale(&block);
            for scaled in [false, true] {
                // `load32` (table scale) and `load16` (F16C scale) give the same values.
                let mut got = [0.0f32; 32];
                // SAFETY: AVX-512 checked above; the block is one whole row.
                unsafe {
                    use super::Loader;
                    let [a, b] = if scaled { rows.load32(0, 0) } else { [rows.load16(0, 0), rows.load16(0, 16)] };
                    core::arch::x86_64::_mm512_storeu_ps(got.as_mut_ptr(), a);
                    core::arch::x86_64::_mm512_storeu_ps(got.as_mut_ptr().add(16), b);
                }
                for (j, g) in got.iter().enumerate() {
                    let want = crate::quant::q4_dequant(crate::quant::q4_code(&block, j), d);
                    assert_eq!(g.to_bits(), want.to_bits(), "scale {bits:#x} element {j} scaled {scaled}");
                }
            }
        }
    }
}
