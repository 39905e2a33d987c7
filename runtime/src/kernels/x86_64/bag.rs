//! AVX2 embedding-bag gather and reduction.
//!
//! Algorithm: zero the output, then for each id in order add its dequantized row, 8
//! columns at a time (scalar for the `cols mod 8` tail), and divide by the count for
//! `mean`. The row of the next id is prefetched while the current one is added, which
//! hides part of the cache-miss latency of random rows in tables far larger than cache
//! (the executor also prefetches whole bags ahead, see `engine::exec`). A q8 table keeps
//! its row scales in a separate array, so a row's scale is a second random cache line:
//! it is prefetched with the codes. Quantized rows are decoded in registers and added
//! straight into the output, never through a temporary row.
//! Every element sees the same IEEE operations in the same order as the scalar reference
//! (dequantize, then add), so results are bit-identical to it.

use core::arch::x86_64::*;

use super::linear::f16_splat;
use crate::graph::BagMode;
use crate::kernels::{WeightData, WeightMatrix};
use crate::quant::{self, Q4_BLOCK, Q4_BLOCK_BYTES};

/// The blocks of a stored q4 row that hold its `cols` columns, as (first column, columns
/// in the block, the block's bytes); every x86-64 level walks q4 rows this way.
pub(super) fn q4_blocks(row: &[u8], cols: usize) -> impl Iterator<Item = (usize, usize, &[u8])> {
    (0..cols)
        .step_by(Q4_BLOCK)
        .zip(row.chunks_exact(Q4_BLOCK_BYTES))
        .map(move |(start, block)| (start, (cols - start).min(Q4_BLOCK), block))
}

/// Where a table's rows live: the stored rows, and for q8 the separate row scales.
#[derive(Clone, Copy)]
pub(super) struct Storage {
    base: *const u8,
    pub(super) row_bytes: usize,
    scales: *const f32,
}

impl Storage {
    pub(super) fn of(table: &WeightMatrix<'_>) -> Storage {
        let cols = table.cols;
        let (base, row_bytes, scales) = match table.data {
            WeightData::F32(d) => (d.as_ptr().cast::<u8>(), cols * 4, core::ptr::null()),
            WeightData::F16(d) | WeightData::Bf16(d) => (d.as_ptr().cast::<u8>(), cols * 2, core::ptr::null()),
            WeightData::Q8 { codes, scales } => (codes.as_ptr().cast::<u8>(), cols, scales.as_ptr()),
            WeightData::Q8Rowwise(d) | WeightData::Q4(d) => (d.as_ptr(), table.row_bytes(), core::ptr::null()),
        };
        Storage { base, row_bytes, scales }
    }

    /// Prefetches up to 4 cache lines of row `id`, and its q8 scale.
    #[inline(always)]
    pub(super) fn prefetch_row(&self, id: usize) {
        let lines = self.row_bytes.div_ceil(64).min(4);
        for l in 0..lines {
            // SAFETY: a prefetch is a hint that never faults, whatever the address
            // (wrapping arithmetic, no dereference); SSE is baseline on x86-64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.base.wrapping_add(id * self.row_bytes + l * 64).cast()) };
        }
        if !self.scales.is_null() {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.scales.wrapping_add(id).cast()) };
        }
    }
}

/// Prefetches the rows `ids` of `table` (at most the first 4 lines of each, plus q8
/// scales).
pub(super) fn prefetch(table: &WeightMatrix<'_>, ids: &[i64]) {
    let st = Storage::of(table);
    for &id in ids {
        st.prefetch_row(id as usize);
    }
}

/// `out = Σ rows(ids)` (or the mean), see the module docs.
///
/// # Safety
/// AVX2, FMA and F16C must be available; every id must be in `0..table.rows`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bag(table: &WeightMatrix<'_>, ids: &[i64], mode: BagMode, out: &mut [f32]) {
    let cols = table.cols;
    let out = &mut out[..cols];
    out.fill(0.0);
    let c8 = cols - cols % 8;
    // All writes below go through `o` (not `out`), so the pointer stays valid throughout.
    let o = out.as_mut_ptr();
    let st = Storage::of(table);
    let row_bytes = st.row_bytes;
    for (i, &id) in ids.iter().enumerate() {
        let r = id as usize;
        if let Some(&next) = ids.get(i + 1) {
            st.prefetch_row(next as usize);
        }
        // SAFETY: in each arm, row `r` is in bounds (ids validated); c + 8 <= c8 <= cols
        // for vector steps, and `out` holds `cols` floats.
        unsafe {
            match table.data {
                WeightData::F32(d) => {
                    let row = d.as_ptr().add(r * cols);
                    let mut c = 0;
                    while c < c8 {
                        _mm256_storeu_ps(
                            o.add(c),
                            _mm256_add_ps(_mm256_loadu_ps(o.add(c)), _mm256_loadu_ps(row.add(c))),
                        );
                        c += 8;
                    }
                    for c in c8..cols {
                        *o.add(c) += *row.add(c);
                    }
                }
                WeightData::F16(d) => {
                    let row = d.as_ptr().add(r * cols);
                    let mut c = 0;
                    while c < c8 {
                        let v = _mm256_cvtph_ps(_mm_loadu_si128(row.add(c).cast()));
                        _mm256_storeu_ps(o.add(c), _mm256_add_ps(_mm256_loadu_ps(o.add(c)), v));
                        c += 8;
                    }
                    for c in c8..cols {
                        *o.add(c) += quant::f16_to_f32(*row.add(c));
                    }
                }
                WeightData::Bf16(d) => {
                    let row = d.as_ptr().add(r * cols);
                    let mut c = 0;
                    while c < c8 {
                        let h = _mm_loadu_si128(row.add(c).cast());
                        let v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
                        _mm256_storeu_ps(o.add(c), _mm256_add_ps(_mm256_loadu_ps(o.add(c)), v));
                        c += 8;
                    }
                    for c in c8..cols {
                        *o.add(c) += quant::bf16_to_f32(*row.add(c));
                    }
                }
                WeightData::Q8 { codes, scales } => {
                    let row = codes.as_ptr().add(r * cols);
                    let s = scales[r];
                    let sv = _mm256_set1_ps(s);
                    let mut c = 0;
                    while c < c8 {
                        let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(row.add(c).cast())));
                        _mm256_storeu_ps(o.add(c), _mm256_add_ps(_mm256_loadu_ps(o.add(c)), _mm256_mul_ps(q, sv)));
                        c += 8;
                    }
                    for c in c8..cols {
                        *o.add(c) += quant::q8_dequant(*row.add(c), s);
                    }
                }
                WeightData::Q8Rowwise(d) => {
                    let row = &d[r * row_bytes..(r + 1) * row_bytes];
                    let (codes, scale, bias) = quant::q8_rowwise_parts(row);
                    let (sv, bv) = (_mm256_set1_ps(scale), _mm256_set1_ps(bias));
                    let p = codes.as_ptr();
                    let mut c = 0;
                    while c < c8 {
                        let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(c).cast())));
                        let v = _mm256_add_ps(_mm256_mul_ps(q, sv), bv);
                        _mm256_storeu_ps(o.add(c), _mm256_add_ps(_mm256_loadu_ps(o.add(c)), v));
                        c += 8;
                    }
                    for (c, &q) in codes.iter().enumerate().skip(c8) {
                        *o.add(c) += quant::q8_rowwise_dequant(q, scale, bias);
                    }
                }
                WeightData::Q4(d) => {
                    for (start, n, block) in q4_blocks(&d[r * row_bytes..(r + 1) * row_bytes], cols) {
                        let dv8 = f16_splat(u16::from_le_bytes([block[0], block[1]]));
                        let dv = _mm256_cvtss_f32(dv8);
                        if n == Q4_BLOCK {
                            let q = _mm_loadu_si128(block.as_ptr().add(2).cast());
                            let mask = _mm_set1_epi8(0x0f);
                            let lo = _mm_and_si128(q, mask);
                            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
                            let eight = _mm256_set1_epi32(8);
                            for (part, half) in [(0usize, lo), (16, hi)] {
                                for (sub, bytes) in [(0usize, half), (8, _mm_srli_si128(half, 8))] {
                                    let code = _mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), eight);
                                    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(code), dv8);
                                    let dst = o.add(start + part + sub);
                                    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), v));
                                }
                            }
                        } else {
                            for j in 0..n {
                                *o.add(start + j) += quant::q4_dequant(quant::q4_code(block, j), dv);
                            }
                        }
                    }
                }
            }
        }
    }
    if mode == BagMode::Mean && !ids.is_empty() {
        let n = ids.len() as f32;
        let nv = _mm256_set1_ps(n);
        let mut c = 0;
        while c < c8 {
            // SAFETY: c + 8 <= cols.
            unsafe { _mm256_storeu_ps(o.add(c), _mm256_div_ps(_mm256_loadu_ps(o.add(c)), nv)) };
            c += 8;
        }
        for c in c8..cols {
            // SAFETY: c < cols.
            unsafe { *o.add(c) /= n };
        }
    }
}
