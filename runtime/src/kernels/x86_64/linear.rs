//! AVX2 + FMA linear layers over every weight format.
//!
//! Algorithm: each output element is a dot product of an input row and a weight row, both
//! contiguous in the PyTorch `[out, in]` layout. A register tile of `MR` input rows ×
//! `NR` weight rows keeps `MR·NR` 8-lane accumulators; per step of 8 columns it loads
//! (and dequantizes) `NR` weight vectors once and reuses each across the `MR` rows.
//!
//! - Small batches (< 4 rows, the memory-bound GEMV case) dequantize weights on the fly
//!   inside the tile, so each quantized byte is read exactly once from memory. One input
//!   row runs against 6 weight rows at a time: more concurrent weight streams and
//!   independent accumulators than a square tile, which keeps the prefetchers and the FMA
//!   pipes busy when every weight is used once.
//! - q4 is decoded a block at a time ([`Loader::load32`]): the block's scale is read from
//!   a table of every f16 widened to f32 (a scalar load and a broadcast from memory, no
//!   vector conversion), and its 32 codes are split and re-centred with byte operations
//!   on 16 bytes before widening, instead of per 8 weights. The values are unchanged.
//! - Larger batches dequantize a panel of weight rows into scratch (L2-sized) and run the
//!   f32 tile over it, amortizing the conversion over all rows of the batch.
//!
//! Canonical arithmetic (what makes results independent of batch size, tile shape,
//! thread split and path): for output (m, o), lane `l` accumulates
//! `fma(w[o, 8c + l], x[m, 8c + l], acc)` for c = 0, 1, …; the 8 lanes are summed in a
//! fixed tree ([`hsum`]); the `K mod 8` tail columns are added with scalar FMAs in order;
//! then the [`Epilogue`] multiplies by the row scale (q8), adds the bias and applies the
//! activation. `w` is the same value in every path: the exact f16/bf16 widening, the
//! q4 product `(code − 8) · d`, and for q8 the code itself — its per-row scale is applied
//! once to the finished dot product instead of once per weight, which takes a multiply
//! out of the memory-bound inner loop and rounds once instead of `K` times.
//!
//! Short reductions (`K ≤ SMALL_K`: a LoRA expand step with `K = rank`, a layer over a
//! handful of dense features) would spend more on one horizontal sum per output than on
//! the dot product itself, so they put *outputs* in the lanes: a panel of weight rows is
//! transposed into scratch (8 × 8 register transposes through the format's loader) and
//! each output is one sequential FMA chain `acc = fma(w[o, k], x[m, k], acc)` for
//! k = 0, 1, …, K−1 from zero, followed by the same epilogue (vectorized, bit-identical to
//! the scalar one). Which form a weight gets depends only on its `K`, never on the batch,
//! so the contract above (a row's result does not depend on its batch or split) holds.
//!
//! Levels: this module holds everything that does not depend on the vector width — the
//! driver ([`drive`]: format routing, short reductions, cache blocking), the row-loader
//! structs, the epilogue — and each x86-64 level (AVX2 here, AVX-512 in `avx512::linear`)
//! adds only its loaders, register tile and expansion, instantiated by `level_linear!`.

use core::arch::x86_64::*;

use crate::graph::Activation;
use crate::kernels::activation;
use crate::kernels::{WeightData, WeightMatrix};
use crate::quant::{self, Q4_BLOCK, Q4_BLOCK_BYTES};
use crate::view::{MatMut, MatRef};

/// Rows of a batch from which weights are dequantized into a scratch panel.
pub(super) const PANEL_MIN_ROWS: usize = 4;
/// Target size of a dequantized panel, in floats (256 KiB: fits L2).
const PANEL_FLOATS: usize = 1 << 16;
/// Reductions up to this length put outputs in the lanes (see the module docs).
pub(super) const SMALL_K: usize = 32;
/// Weight rows transposed at once by the short-reduction path (a multiple of 8).
const SHORT_PANEL: usize = 256;

/// Reads 8 consecutive dequantized weights of one row, and single weights for tails.
trait Loader {
    /// Weights `o, k..k+8` (`k` is a multiple of 8, `k + 8 <= cols`).
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available and the indices in bounds.
    unsafe fn load8(&self, o: usize, k: usize) -> __m256;
    /// Weight `o, k`, dequantized exactly as `load8` would.
    fn scalar(&self, o: usize, k: usize) -> f32;

    /// Whether [`Loader::load32`] decodes a whole block at once (cheaper than four
    /// `load8`s), so the GEMV tile should step 32 columns at a time.
    const BLOCKS: bool = false;

    /// Weights `o, k..k+32` as four vectors, the same values as four `load8`s
    /// (`k` is a multiple of 32, `k + 32 <= cols`).
    ///
    /// # Safety
    /// As for `load8`.
    #[inline(always)]
    unsafe fn load32(&self, o: usize, k: usize) -> [__m256; 4] {
        // SAFETY: forwarded.
        unsafe { [self.load8(o, k), self.load8(o, k + 8), self.load8(o, k + 16), self.load8(o, k + 24)] }
    }

    /// Weights `o, k..k+n` (`n < 8`, `k + n <= cols`) in the low lanes, zeros above.
    ///
    /// # Safety
    /// AVX2 must be available and the indices in bounds.
    #[inline(always)]
    unsafe fn load_tail(&self, o: usize, k: usize, n: usize) -> __m256 {
        let s = |i: usize| if i < n { self.scalar(o, k + i) } else { 0.0 };
        // Built in registers: a store of single lanes followed by a vector load would
        // stall on store forwarding once per output.
        // SAFETY: register-only; AVX per the caller.
        unsafe { _mm256_setr_ps(s(0), s(1), s(2), s(3), s(4), s(5), s(6), s(7)) }
    }
}

// The row loaders of every format. They are shared by the x86-64 levels: each level
// implements its own `Loader` (its vector width) for them, and `with_loader!` maps a
// weight's format to them once for all levels.

pub(super) struct F32Rows<'a> {
    pub(super) data: &'a [f32],
    pub(super) stride: usize,
}

impl Loader for F32Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> __m256 {
        debug_assert!(o * self.stride + k + 8 <= self.data.len());
        // SAFETY: the caller keeps `o, k..k+8` inside the row; unaligned load.
        unsafe { _mm256_loadu_ps(self.data.as_ptr().add(o * self.stride + k)) }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        self.data[o * self.stride + k]
    }

    #[inline(always)]
    unsafe fn load_tail(&self, o: usize, k: usize, n: usize) -> __m256 {
        debug_assert!(n < 8 && o * self.stride + k + n <= self.data.len());
        // SAFETY: lanes below `n` are in the row (caller); masked lanes are not read.
        unsafe {
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            _mm256_maskload_ps(self.data.as_ptr().add(o * self.stride + k), mask)
        }
    }
}

pub(super) struct F16Rows<'a> {
    pub(super) data: &'a [u16],
    pub(super) cols: usize,
}

impl Loader for F16Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> __m256 {
        debug_assert!(o * self.cols + k + 8 <= self.data.len());
        // SAFETY: in bounds per the caller; F16C is available per the trait contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(self.data.as_ptr().add(o * self.cols + k).cast())) }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        quant::f16_to_f32(self.data[o * self.cols + k])
    }
}

pub(super) struct Bf16Rows<'a> {
    pub(super) data: &'a [u16],
    pub(super) cols: usize,
}

impl Loader for Bf16Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> __m256 {
        debug_assert!(o * self.cols + k + 8 <= self.data.len());
        // SAFETY: in bounds per the caller; bf16 widening is a 16-bit shift of the bits.
        unsafe {
            let h = _mm_loadu_si128(self.data.as_ptr().add(o * self.cols + k).cast());
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        quant::bf16_to_f32(self.data[o * self.cols + k])
    }
}

/// q8 codes as f32, unscaled: the row scale is applied by the [`Epilogue`].
pub(super) struct Q8Rows<'a> {
    pub(super) codes: &'a [i8],
    pub(super) cols: usize,
}

impl Loader for Q8Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> __m256 {
        debug_assert!(o * self.cols + k + 8 <= self.codes.len());
        // SAFETY: in bounds per the caller; 8 codes are read with a 64-bit load.
        unsafe {
            let q = _mm_loadl_epi64(self.codes.as_ptr().add(o * self.cols + k).cast());
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))
        }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        self.codes[o * self.cols + k] as f32
    }
}

pub(super) struct Q4Rows<'a> {
    pub(super) data: &'a [u8],
    pub(super) row_bytes: usize,
    /// [`f16_table`], fetched once per call.
    pub(super) f16: &'static F16Table,
}

/// Every f16 bit pattern widened to f32 (256 KiB, built on first use). A q4 block's scale
/// then costs one scalar load and a broadcast from memory instead of a broadcast and a
/// conversion on the vector ports the decode is bound by. Scales of real weights span a
/// few binades, so the entries in use stay cache-resident.
pub(super) fn f16_table() -> &'static F16Table {
    static TABLE: std::sync::OnceLock<Box<F16Table>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![0.0f32; 1 << 16].into_boxed_slice();
        for (bits, v) in table.iter_mut().enumerate() {
            *v = quant::f16_to_f32(bits as u16);
        }
        #[allow(clippy::expect_used)]
        table.try_into().expect("2^16 entries")
    })
}

/// f32 values indexed by f16 bit patterns (any `u16` indexes it without a bounds check).
pub(super) type F16Table = [f32; 1 << 16];

impl Loader for Q4Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> __m256 {
        let block = o * self.row_bytes + (k / Q4_BLOCK) * Q4_BLOCK_BYTES;
        let j = k % Q4_BLOCK;
        debug_assert!(block + Q4_BLOCK_BYTES <= self.data.len());
        // SAFETY: the block lies inside row `o` (k < cols <= blocks·32); bytes 2 + j%16
        // .. + 8 lie inside its 16 nibble bytes.
        unsafe {
            let p = self.data.as_ptr().add(block);
            let d = f16_splat(u16::from_le_bytes([*p, *p.add(1)]));
            let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(2 + j % 16).cast()));
            let nib = if j < 16 { bytes } else { _mm256_srli_epi32(bytes, 4) };
            let code = _mm256_sub_epi32(_mm256_and_si256(nib, _mm256_set1_epi32(0x0f)), _mm256_set1_epi32(8));
            _mm256_mul_ps(_mm256_cvtepi32_ps(code), d)
        }
    }

    const BLOCKS: bool = true;

    /// One whole block: the scale is widened once and the 32 codes are split and
    /// re-centred with byte operations on 16 bytes, instead of once per 8 weights.
    #[inline(always)]
    unsafe fn load32(&self, o: usize, k: usize) -> [__m256; 4] {
        let block = o * self.row_bytes + (k / Q4_BLOCK) * Q4_BLOCK_BYTES;
        debug_assert!(k.is_multiple_of(Q4_BLOCK) && block + Q4_BLOCK_BYTES <= self.data.len());
        // SAFETY: the block's 18 bytes lie inside row `o` (caller); the table holds the
        // exact widenings; register-only after.
        unsafe {
            let p = self.data.as_ptr().add(block);
            let d = _mm256_set1_ps(self.f16[u16::from_le_bytes([*p, *p.add(1)]) as usize]);
            let q = _mm_loadu_si128(p.add(2).cast());
            let (mask, eight) = (_mm_set1_epi8(0x0f), _mm_set1_epi8(8));
            // Elements 0..16 are the low nibbles, 16..32 the high ones; codes − 8 fit i8.
            let lo = _mm_sub_epi8(_mm_and_si128(q, mask), eight);
            let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), mask), eight);
            let widen = |b: __m128i| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), d);
            [widen(lo), widen(_mm_unpackhi_epi64(lo, lo)), widen(hi), widen(_mm_unpackhi_epi64(hi, hi))]
        }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        let start = o * self.row_bytes + (k / Q4_BLOCK) * Q4_BLOCK_BYTES;
        let block = &self.data[start..start + Q4_BLOCK_BYTES];
        quant::q4_dequant(quant::q4_code(block, k % Q4_BLOCK), quant::q4_scale(block))
    }
}

/// Broadcasts an f16 scale to 8 f32 lanes (F16C; exact, like the scalar conversion).
#[inline(always)]
pub(super) unsafe fn f16_splat(bits: u16) -> __m256 {
    // SAFETY: register-only F16C conversion; the caller guarantees the feature.
    unsafe { _mm256_cvtph_ps(_mm_set1_epi16(bits as i16)) }
}

/// Sums the 8 lanes in the fixed order ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only AVX operations; the caller guarantees AVX2.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
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
    // SAFETY: the caller guarantees AVX2/FMA, `m0 + MR <= x.rows`, `o0 + NR <= w rows`
    // and `k == x.cols`; every load below stays inside those rows.
    unsafe {
        let mut xp = [core::ptr::null::<f32>(); MR];
        for (i, p) in xp.iter_mut().enumerate() {
            *p = x.row(m0 + i).as_ptr();
        }
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let k8 = k - k % 8;
        let mut kk = 0;
        if L::BLOCKS {
            // One block of each weight row at a time, decoded once and used by every
            // input row while in registers; each lane still sees columns 8c + l in order.
            while kk + 32 <= k8 {
                for j in 0..NR {
                    let wv = w.load32(o0 + j, kk);
                    for i in 0..MR {
                        for (c, v) in wv.iter().enumerate() {
                            acc[i][j] = _mm256_fmadd_ps(*v, _mm256_loadu_ps(xp[i].add(kk + 8 * c)), acc[i][j]);
                        }
                    }
                }
                kk += 32;
            }
        }
        while kk < k8 {
            let mut wv = [_mm256_setzero_ps(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = w.load8(o0 + j, kk);
            }
            for i in 0..MR {
                let xv = _mm256_loadu_ps(xp[i].add(kk));
                for j in 0..NR {
                    acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
                }
            }
            kk += 8;
        }
        for i in 0..MR {
            for j in 0..NR {
                let mut s = hsum(acc[i][j]);
                for t in k8..k {
                    s = w.scalar(o0 + j, t).mul_add(*xp[i].add(t), s);
                }
                out[i][j] = s;
            }
        }
    }
}

/// What happens to a finished dot product of weight row `o` (local to the grid) before
/// it is stored at output column `col0 + o`: row scale, bias, activation — or, for
/// adapter steps, `y += alpha · dot` instead of a store.
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub(super) col0: usize,
    pub(super) scales: Option<&'a [f32]>,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) act: Option<Activation>,
    pub(super) accumulate: Option<f32>,
}

impl<'a> Epilogue<'a> {
    #[inline(always)]
    fn apply(&self, o: usize, dot: f32) -> f32 {
        let scaled = self.scales.map_or(dot, |s| dot * s[o]);
        let v = scaled + self.bias.map_or(0.0, |b| b[o]);
        match self.act {
            None => v,
            Some(Activation::Relu) => activation::relu(v),
            Some(a) => activation::apply(a, v),
        }
    }

    /// Stores (or, for adapter steps, adds `alpha ·`) the finished dot product of row `o`.
    #[inline(always)]
    pub(super) fn finish(&self, o: usize, dot: f32, dst: &mut f32) {
        let v = self.apply(o, dot);
        *dst = match self.accumulate {
            Some(alpha) => *dst + alpha * v,
            None => v,
        };
    }

    /// The epilogue of weight rows `o..o + n` as a grid of their own.
    pub(super) fn rows(&self, o: usize, n: usize) -> Epilogue<'a> {
        Epilogue {
            col0: self.col0 + o,
            scales: self.scales.map(|s| &s[o..o + n]),
            bias: self.bias.map(|b| &b[o..o + n]),
            act: self.act,
            accumulate: self.accumulate,
        }
    }
}

/// Writes a finished tile: tile column `j` is weight row `o0 + j` of the grid.
#[inline(always)]
pub(super) fn store<const MR: usize, const NR: usize>(
    out: &[[f32; NR]; MR],
    y: &mut MatMut<'_>,
    m0: usize,
    o0: usize,
    ep: &Epilogue<'_>,
) {
    for (i, row) in out.iter().enumerate() {
        let yrow = &mut y.row_mut(m0 + i)[ep.col0 + o0..ep.col0 + o0 + NR];
        for (j, (dst, &s)) in yrow.iter_mut().zip(row).enumerate() {
            ep.finish(o0 + j, s, dst);
        }
    }
}

/// Defines a level's linear kernel from its `Loader`, `tile` and `expand` (names resolve
/// where the macro is invoked): the unit type `$level` and its `Tiles` (the batched tile
/// `$pm × $pn` over f32 panels, a GEMV tile per batch size), the `#[target_feature]`
/// entry point `linear` over `drive`, and the tile grid, whose `dispatch_tile`
/// instantiates the `($mr, $nr)` shapes those grids can ask for.
macro_rules! level_linear {
    (
        $level:ident, $features:literal,
        panel: ($pm:literal, $pn:literal),
        gemv: { $($rows:pat => ($gm:literal, $gn:literal)),+ $(,)? },
        tiles: [$(($mr:literal, $nr:literal)),+ $(,)?] $(,)?
    ) => {
        /// This level's `Tiles`.
        struct $level;

        impl Tiles for $level {
            #[inline(always)]
            unsafe fn panel_grid(
                x: &MatRef<'_>,
                panel: &[f32],
                rows: usize,
                k: usize,
                ep: &Epilogue<'_>,
                y: &mut MatMut<'_>,
            ) {
                // SAFETY: forwarded.
                unsafe { grid::<$pm, $pn, _>(x, &F32Rows { data: panel, stride: k }, rows, k, ep, y) }
            }

            #[inline(always)]
            unsafe fn gemv(x: &MatRef<'_>, w: &WeightMatrix<'_>, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
                let n = w.rows;
                // SAFETY: forwarded.
                unsafe {
                    with_loader!(w, l => match x.rows() {
                        $($rows => grid::<$gm, $gn, _>(x, l, n, w.cols, ep, y),)+
                    }, rowwise => {})
                }
            }

            #[inline(always)]
            unsafe fn panel_row(w: &WeightMatrix<'_>, r: usize, out: &mut [f32]) {
                // SAFETY: forwarded.
                unsafe { panel_row(w, r, out) }
            }
        }

        /// This level's linear kernel: `drive` over its tiles.
        ///
        /// # Safety
        /// As for `drive`; the CPU must also support this level's target features.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn linear(
            x: MatRef<'_>,
            w: &WeightMatrix<'_>,
            bias: Option<&[f32]>,
            act: Option<Activation>,
            accumulate: Option<f32>,
            y: MatMut<'_>,
            scratch: &mut [f32],
        ) {
            // SAFETY: per this function's contract.
            unsafe { drive::<$level>(x, w, bias, act, accumulate, y, scratch) }
        }

        /// `Tiles::panel_row` (a function of its own, not inlined into every panel).
        #[target_feature(enable = $features)]
        unsafe fn panel_row(w: &WeightMatrix<'_>, r: usize, out: &mut [f32]) {
            // SAFETY: features per this function's contract; row `r` exists.
            unsafe { with_loader!(w, l => expand(l, r, w.cols, out), rowwise => w.dequant_row(r, out)) }
        }

        /// Runs the tile grid over rows `m` (all of x) × weight rows `0..n` of loader
        /// `w`, finishing each dot product with `ep`.
        #[inline(always)]
        unsafe fn grid<const MR: usize, const NR: usize, L: Loader>(
            x: &MatRef<'_>,
            w: &L,
            n: usize,
            k: usize,
            ep: &Epilogue<'_>,
            y: &mut MatMut<'_>,
        ) {
            let m = x.rows();
            let mut m0 = 0;
            while m0 < m {
                let mr = (m - m0).min(MR);
                let mut o = 0;
                while o < n {
                    let nr = (n - o).min(NR);
                    // SAFETY: forwarded; (mr, nr) bound the tile inside x and the loader's rows.
                    unsafe { dispatch_tile(x, m0, mr, w, o, nr, k, ep, y) };
                    o += nr;
                }
                m0 += mr;
            }
        }

        /// Calls the `tile` monomorph for the runtime sizes `(mr, nr)`.
        ///
        /// A function of its own (not forced inline): every arm's tile is inlined here, and
        /// debug builds give each arm its own stack slots, so inlining all of them into the
        /// caller for every format would overflow a test thread's stack.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn dispatch_tile<L: Loader>(
            x: &MatRef<'_>,
            m0: usize,
            mr: usize,
            w: &L,
            o0: usize,
            nr: usize,
            k: usize,
            ep: &Epilogue<'_>,
            y: &mut MatMut<'_>,
        ) {
            match (mr, nr) {
                $(($mr, $nr) => {
                    let mut out = [[0.0f32; $nr]; $mr];
                    // SAFETY: forwarded from the caller.
                    unsafe { tile::<$mr, $nr, L>(x, m0, w, o0, k, &mut out) };
                    store::<$mr, $nr>(&out, y, m0, o0, ep);
                })+
                _ => unreachable!("tile {mr}x{nr}"),
            }
        }
    };
}
pub(super) use level_linear;

/// Floats of scratch `linear` needs for this weight and batch.
pub(super) fn scratch_len(w: &WeightMatrix<'_>, rows: usize) -> usize {
    if matches!(w.data, WeightData::Q8Rowwise(_)) {
        // Not a linear format; `linear` hands it to the reference, which needs a row.
        return w.cols;
    }
    if w.cols <= SMALL_K {
        return w.cols * w.rows.min(SHORT_PANEL).div_ceil(8) * 8;
    }
    if rows < PANEL_MIN_ROWS || matches!(w.data, WeightData::F32(_)) { 0 } else { panel_rows(w) * w.cols }
}

pub(super) fn panel_rows(w: &WeightMatrix<'_>) -> usize {
    (PANEL_FLOATS / w.cols.max(1)).clamp(3, w.rows.max(3)).div_ceil(3) * 3
}

/// Binds `$l` to the row loader of `$w`'s format (these structs, which every x86-64 level
/// implements its own loader trait for) and evaluates `$body`; `Q8Rowwise`, which has no
/// linear loader, evaluates `$rowwise`. The one place a level maps formats to loaders.
macro_rules! with_loader {
    ($w:expr, $l:ident => $body:expr, rowwise => $rowwise:expr) => {
        match $w.data {
            WeightData::F32(data) => {
                let $l = &F32Rows { data, stride: $w.cols };
                $body
            }
            WeightData::F16(data) => {
                let $l = &F16Rows { data, cols: $w.cols };
                $body
            }
            WeightData::Bf16(data) => {
                let $l = &Bf16Rows { data, cols: $w.cols };
                $body
            }
            WeightData::Q8 { codes, .. } => {
                let $l = &Q8Rows { codes, cols: $w.cols };
                $body
            }
            WeightData::Q4(data) => {
                let $l = &Q4Rows { data, row_bytes: $w.row_bytes(), f16: f16_table() };
                $body
            }
            WeightData::Q8Rowwise(_) => $rowwise,
        }
    };
}
pub(super) use with_loader;

/// The width-specific half of a level's linear kernel; [`drive`] is the rest.
///
/// Implementations are `#[inline(always)]` (or `#[target_feature]` functions of their
/// own), so that inlined into a level's `#[target_feature]` entry point they compile for
/// that level's features.
pub(super) trait Tiles {
    /// The batched tile grid over weight rows `0..rows` of an f32 `panel` (`rows × k`).
    ///
    /// # Safety
    /// The level's features must be available; `panel` holds `rows × k` floats, `x` has
    /// `k` columns and `y` the grid's rows and columns.
    unsafe fn panel_grid(x: &MatRef<'_>, panel: &[f32], rows: usize, k: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>);

    /// Fewer than [`PANEL_MIN_ROWS`] rows, straight from the stored weights (never
    /// `Q8Rowwise`).
    ///
    /// # Safety
    /// As for [`Tiles::panel_grid`], with `w` in place of the panel.
    unsafe fn gemv(x: &MatRef<'_>, w: &WeightMatrix<'_>, ep: &Epilogue<'_>, y: &mut MatMut<'_>);

    /// Expands row `r` of `w` into `out[..w.cols]` exactly as the level's loaders produce
    /// it (q8 rows stay unscaled codes; the epilogue scales them).
    ///
    /// # Safety
    /// The level's features must be available and row `r` must exist.
    unsafe fn panel_row(w: &WeightMatrix<'_>, r: usize, out: &mut [f32]);
}

/// `y = act(x · Wᵀ + b)`, or `y += accumulate · (x · Wᵀ)` when `accumulate` is set
/// (then `bias` and `act` must be `None`): the level-independent driver — format routing,
/// short reductions, cache blocking — over a level's [`Tiles`].
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and `T`'s level; shapes must satisfy the
/// `LinearKernel` contract (`x.cols == w.cols`, `y` is `x.rows × w.rows`, scratch per
/// [`scratch_len`]). Inline into the level's `#[target_feature]` entry point.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn drive<T: Tiles>(
    x: MatRef<'_>,
    w: &WeightMatrix<'_>,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    accumulate: Option<f32>,
    mut y: MatMut<'_>,
    scratch: &mut [f32],
) {
    let (n, k, m) = (w.rows, w.cols, x.rows());
    debug_assert_eq!(x.cols(), k);
    debug_assert!(y.rows() == m && y.cols() == n);
    let y = &mut y;
    let scales = match w.data {
        WeightData::Q8 { scales, .. } => Some(scales),
        WeightData::Q8Rowwise(_) => {
            // Rejected for linears at validation; fall back to the reference rather than
            // guess.
            let reference = crate::kernels::SCALAR.linear;
            match accumulate {
                Some(alpha) => reference.linear_accumulate(x, w, alpha, y.reborrow(), scratch),
                None => reference.linear(x, w, bias, act, y.reborrow(), scratch),
            }
            return;
        }
        _ => None,
    };
    let ep = Epilogue { col0: 0, scales, bias, act, accumulate };
    // SAFETY: for all calls below, the features are available per this function's
    // contract; the loaders cover exactly rows 0..n of `w` and `k` columns, which the
    // grids stay inside.
    unsafe {
        if k <= SMALL_K {
            // AVX2 at every level: the choice depends only on `K`, and a LoRA step with
            // `K = rank` gains nothing from wider vectors.
            with_loader!(w, l => short_reduction(&x, l, n, k, &ep, y, scratch), rowwise => {});
            return;
        }
        if m < PANEL_MIN_ROWS {
            return T::gemv(&x, w, &ep, y);
        }
        // Cache blocking: one L2-sized panel of weight rows serves every input row before
        // the next panel is touched. f32 weights are used in place; other formats are
        // expanded into the scratch panel first.
        let nb = panel_rows(w);
        let mut o = 0;
        while o < n {
            let rows = nb.min(n - o);
            let panel: &[f32] = match w.data {
                WeightData::F32(data) => &data[o * k..(o + rows) * k],
                _ => {
                    let panel = &mut scratch[..rows * k];
                    let sub = w.rows_range(o..o + rows);
                    for r in 0..rows {
                        T::panel_row(&sub, r, &mut panel[r * k..(r + 1) * k]);
                    }
                    panel
                }
            };
            T::panel_grid(&x, panel, rows, k, &ep.rows(o, rows), y);
            o += rows;
        }
    }
}

// Batches of 4 or more: 4 × 3 tiles over f32 panels. Fewer rows, straight from the
// stored weights: one row against 6 weight rows (more concurrent weight streams and
// independent accumulators keep a memory-bound GEMV fed; 13 of the 16 registers), else
// (2 × 4) or (3 × 3).
#[rustfmt::skip]
level_linear!(
    Avx2, "avx2,fma,f16c",
    panel: (4, 3),
    gemv: { 1 => (1, 6), 3 => (3, 3), _ => (2, 4) },
    tiles: [
        (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6),
        (2, 1), (2, 2), (2, 3), (2, 4),
        (3, 1), (3, 2), (3, 3),
        (4, 1), (4, 2), (4, 3),
    ],
);

/// `K ≤ SMALL_K`: outputs in the lanes. A panel of up to [`SHORT_PANEL`] weight rows is
/// transposed into scratch (8 × 8 blocks in registers, through the format's loader), then
/// each input row (two at a time) runs one sequential FMA chain per output lane over `k`,
/// and finishes 8 outputs at once with the vectorized epilogue.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn short_reduction<L: Loader>(
    x: &MatRef<'_>,
    w: &L,
    n: usize,
    k: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
    scratch: &mut [f32],
) {
    let mut o0 = 0;
    while o0 < n {
        let cols = (n - o0).min(SHORT_PANEL);
        let padded = cols.div_ceil(8) * 8;
        let bt = &mut scratch[..k * padded];
        // SAFETY: AVX2 per the contract; rows o0..o0+cols exist; bt holds k × padded.
        unsafe { transpose_panel(w, o0, cols, padded, k, bt) };
        let ep = ep.rows(o0, cols);
        let mut mi = 0;
        while mi < x.rows() {
            let pair = mi + 1 < x.rows();
            let mut j = 0;
            while j < padded {
                let nv = ((padded - j) / 8).min(4);
                // SAFETY: columns j..j + 8·nv lie in the padded panel; rows mi (+1) exist.
                unsafe {
                    match (nv, pair) {
                        (4, true) => lanes::<4, 2>(x, mi, bt, padded, j, cols, &ep, y),
                        (4, false) => lanes::<4, 1>(x, mi, bt, padded, j, cols, &ep, y),
                        (3, true) => lanes::<3, 2>(x, mi, bt, padded, j, cols, &ep, y),
                        (3, false) => lanes::<3, 1>(x, mi, bt, padded, j, cols, &ep, y),
                        (2, true) => lanes::<2, 2>(x, mi, bt, padded, j, cols, &ep, y),
                        (2, false) => lanes::<2, 1>(x, mi, bt, padded, j, cols, &ep, y),
                        (_, true) => lanes::<1, 2>(x, mi, bt, padded, j, cols, &ep, y),
                        (_, false) => lanes::<1, 1>(x, mi, bt, padded, j, cols, &ep, y),
                    }
                }
                j += 8 * nv;
            }
            mi += if pair { 2 } else { 1 };
        }
        o0 += cols;
    }
}

/// `bt[kk · padded + j] = w[o0 + j, kk]` for `j < cols`, zero for `cols <= j < padded`.
#[inline(always)]
unsafe fn transpose_panel<L: Loader>(w: &L, o0: usize, cols: usize, padded: usize, k: usize, bt: &mut [f32]) {
    // SAFETY: loads stay inside rows o0..o0+cols and columns 0..k (tails through
    // `load_tail`); stores stay inside bt (k rows of padded floats). AVX2 per the caller.
    unsafe {
        let mut jb = 0;
        while jb < padded {
            let mut c = 0;
            while c < k {
                let width = (k - c).min(8);
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, v) in r.iter_mut().enumerate() {
                    if jb + i < cols {
                        *v = if width == 8 { w.load8(o0 + jb + i, c) } else { w.load_tail(o0 + jb + i, c, width) };
                    }
                }
                let t = transpose8(&r);
                for (l, col) in t.iter().enumerate().take(width) {
                    _mm256_storeu_ps(bt.as_mut_ptr().add((c + l) * padded + jb), *col);
                }
                c += 8;
            }
            jb += 8;
        }
    }
}

/// The 8 × 8 transpose: lane `i` of result `l` is lane `l` of input `i`.
#[inline(always)]
unsafe fn transpose8(r: &[__m256; 8]) -> [__m256; 8] {
    // SAFETY: register-only AVX shuffles; the caller guarantees AVX.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }
}

/// Outputs `j..j + 8·NV` of the panel for input rows `mi..mi + R`: lane = output, one
/// sequential FMA chain over `k` from zero, then the epilogue.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn lanes<const NV: usize, const R: usize>(
    x: &MatRef<'_>,
    mi: usize,
    bt: &[f32],
    padded: usize,
    j: usize,
    cols: usize,
    ep: &Epilogue<'_>,
    y: &mut MatMut<'_>,
) {
    // SAFETY: the caller guarantees AVX2/FMA, `j + 8·NV <= padded` and rows mi..mi+R.
    unsafe {
        let k = x.cols();
        let mut xp = [core::ptr::null::<f32>(); R];
        for (r, p) in xp.iter_mut().enumerate() {
            *p = x.row(mi + r).as_ptr();
        }
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        for kk in 0..k {
            let b = bt.as_ptr().add(kk * padded + j);
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, slot) in bv.iter_mut().enumerate() {
                *slot = _mm256_loadu_ps(b.add(8 * v));
            }
            for r in 0..R {
                let xv = _mm256_set1_ps(*xp[r].add(kk));
                for v in 0..NV {
                    acc[r][v] = _mm256_fmadd_ps(bv[v], xv, acc[r][v]);
                }
            }
        }
        for (r, row_acc) in acc.iter().enumerate() {
            let yrow = y.row_mut(mi + r);
            for (v, &sums) in row_acc.iter().enumerate() {
                let o = j + 8 * v;
                if o >= cols {
                    break;
                }
                let valid = (cols - o).min(8);
                if valid == 8 && vector_epilogue(ep, o, sums, yrow[ep.col0 + o..ep.col0 + o + 8].as_mut_ptr()) {
                    continue;
                }
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
                for (l, &s) in lanes.iter().enumerate().take(valid) {
                    ep.finish(o + l, s, &mut yrow[ep.col0 + o + l]);
                }
            }
        }
    }
}

/// Finishes 8 outputs `o..o + 8` at `dst` with exactly the scalar [`Epilogue::apply`]
/// arithmetic (same operations, same rounding), or returns `false` for an activation it
/// does not vectorize.
///
/// # Safety
/// AVX2 must be available; `dst` must point at 8 writable floats; `o + 8` must be within
/// the epilogue's scales and bias.
#[inline(always)]
unsafe fn vector_epilogue(ep: &Epilogue<'_>, o: usize, sums: __m256, dst: *mut f32) -> bool {
    if !matches!(ep.act, None | Some(Activation::Relu)) {
        return false;
    }
    // SAFETY: per the function's contract.
    unsafe {
        let mut v = sums;
        if let Some(scales) = ep.scales {
            v = _mm256_mul_ps(v, _mm256_loadu_ps(scales[o..o + 8].as_ptr()));
        }
        let bias = match ep.bias {
            Some(b) => _mm256_loadu_ps(b[o..o + 8].as_ptr()),
            None => _mm256_setzero_ps(),
        };
        v = _mm256_add_ps(v, bias);
        if ep.act.is_some() {
            // relu keeps NaN: only lanes ordered-less-than zero become zero.
            let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(v, _mm256_setzero_ps());
            v = _mm256_blendv_ps(v, _mm256_setzero_ps(), negative);
        }
        if let Some(alpha) = ep.accumulate {
            v = _mm256_add_ps(_mm256_loadu_ps(dst), _mm256_mul_ps(_mm256_set1_ps(alpha), v));
        }
        _mm256_storeu_ps(dst, v);
    }
    true
}

/// `out[..k]` = row `r` of `l`, a block at a time where the loader decodes blocks.
#[inline(always)]
unsafe fn expand<L: Loader>(l: &L, r: usize, k: usize, out: &mut [f32]) {
    let k8 = k - k % 8;
    let out = &mut out[..k];
    let mut c = 0;
    // SAFETY: every store is at c + 8 <= k8 <= k = out.len(); loads stay in row `r`
    // (the caller guarantees the features).
    unsafe {
        if L::BLOCKS {
            while c + 32 <= k8 {
                for (i, v) in l.load32(r, c).into_iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * i), v);
                }
                c += 32;
            }
        }
        while c < k8 {
            _mm256_storeu_ps(out.as_mut_ptr().add(c), l.load8(r, c));
            c += 8;
        }
    }
    for (c, o) in out.iter_mut().enumerate().skip(k8) {
        *o = l.scalar(r, c);
    }
}
