//! AVX-512 embedding-bag gather and reduction.
//!
//! The AVX2 algorithm with 16 lanes and masked tails: zero the output, add each id's
//! dequantized row in order, divide by the count for `mean`; the next id's row is
//! prefetched while the current one is added. Every element sees the same IEEE
//! operations in the same order as the scalar reference (dequantize — `q · s`,
//! `q · s + b` unfused, `(c − 8) · d` — then add), so results are bit-identical to it.
//! q4 rows are decoded with the linear kernel's 16-entry table lookup.

use core::arch::x86_64::*;

use super::linear::q4_block;
// Prefetching is the same baseline instruction at every x86-64 level: the AVX2 policy.
pub(super) use super::super::bag::prefetch;
use super::super::bag::{Storage, q4_blocks};
use crate::graph::BagMode;
use crate::kernels::{WeightData, WeightMatrix};
use crate::quant;

/// `out[c..c+16] += v` (only the lanes in `mask`).
#[inline(always)]
unsafe fn add_into(o: *mut f32, mask: u16, v: __m512) {
    // SAFETY: the caller keeps the masked lanes inside `out`; masked-off lanes are
    // neither read nor written.
    unsafe { _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), v)) }
}

/// Runs `f(c, mask)` for each 16-column step of a row of `cols` (the last one masked).
#[inline(always)]
fn steps(cols: usize, mut f: impl FnMut(usize, u16)) {
    let mut c = 0;
    while c < cols {
        let n = (cols - c).min(16);
        f(c, if n == 16 { u16::MAX } else { (1u16 << n) - 1 });
        c += 16;
    }
}

/// `out = Σ rows(ids)` (or the mean), see the module docs.
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2 and F16C must be available; every id must be in
/// `0..table.rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn bag(table: &WeightMatrix<'_>, ids: &[i64], mode: BagMode, out: &mut [f32]) {
    let cols = table.cols;
    let out = &mut out[..cols];
    out.fill(0.0);
    // All writes below go through `o` (not `out`), so the pointer stays valid throughout.
    let o = out.as_mut_ptr();
    let storage = Storage::of(table);
    let row_bytes = storage.row_bytes;
    for (i, &id) in ids.iter().enumerate() {
        let r = id as usize;
        if let Some(&next) = ids.get(i + 1) {
            storage.prefetch_row(next as usize);
        }
        // SAFETY: in every arm, row `r` is in bounds (ids validated by the caller); each
        // step's masked lanes stay below `cols`, inside both the row and `out`.
        unsafe {
            match table.data {
                WeightData::F32(d) => {
                    let row = d.as_ptr().add(r * cols);
                    steps(cols, |c, m| add_into(o.add(c), m, _mm512_maskz_loadu_ps(m, row.add(c))));
                }
                WeightData::F16(d) => {
                    let row = d.as_ptr().add(r * cols);
                    steps(cols, |c, m| {
                        add_into(o.add(c), m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row.add(c).cast())))
                    });
                }
                WeightData::Bf16(d) => {
                    let row = d.as_ptr().add(r * cols);
                    steps(cols, |c, m| {
                        let h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row.add(c).cast()));
                        add_into(o.add(c), m, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h)));
                    });
                }
                WeightData::Q8 { codes, scales } => {
                    let row = codes.as_ptr().add(r * cols);
                    let sv = _mm512_set1_ps(scales[r]);
                    steps(cols, |c, m| {
                        let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, row.add(c).cast())));
                        add_into(o.add(c), m, _mm512_mul_ps(q, sv));
                    });
                }
                WeightData::Q8Rowwise(d) => {
                    let (codes, scale, bias) = quant::q8_rowwise_parts(&d[r * row_bytes..(r + 1) * row_bytes]);
                    let (sv, bv) = (_mm512_set1_ps(scale), _mm512_set1_ps(bias));
                    let p = codes.as_ptr();
                    steps(cols, |c, m| {
                        let q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p.add(c).cast())));
                        add_into(o.add(c), m, _mm512_add_ps(_mm512_mul_ps(q, sv), bv));
                    });
                }
                WeightData::Q4(d) => {
                    for (start, n, block) in q4_blocks(&d[r * row_bytes..(r + 1) * row_bytes], cols) {
                        let (lut, bytes) = q4_block(block.as_ptr());
                        let lo = if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
                        add_into(o.add(start), lo, _mm512_permutexvar_ps(bytes, lut));
                        if n > 16 {
                            let hi = if n == 32 { u16::MAX } else { (1u16 << (n - 16)) - 1 };
                            let v = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(bytes), lut);
                            add_into(o.add(start + 16), hi, v);
                        }
                    }
                }
            }
        }
    }
    if mode == BagMode::Mean && !ids.is_empty() {
        let n = ids.len() as f32;
        let nv = _mm512_set1_ps(n);
        // SAFETY: masked lanes stay below `cols`.
        steps(cols, |c, m| unsafe {
            let p = o.add(c);
            _mm512_mask_storeu_ps(p, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, p), nv));
        });
    }
}
