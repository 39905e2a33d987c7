//! NEON linear layers (GEMV and GEMM) over f32, f16, bf16, q8 and Q4_0 weights.
//!
//! Algorithm: each output `y[m, o]` is the dot product of input row `m` and weight row
//! `o`, both contiguous in the PyTorch `[out, in]` layout the model file stores (read in
//! place from the mmap: no repacking). A register tile of `MR ≤ 4` input rows × `NR ≤ 4`
//! weight rows keeps `MR·NR` four-lane accumulators; per step of 8 columns it loads and
//! widens the `NR` weight vectors once (f16 with `fcvtl`, bf16 with a shift, q8 with
//! `sxtl` + `scvtf`, Q4_0 with mask/shift, `− 8`, `scvtf`, `× d`) and reuses each across the
//! `MR` input rows with `fmla`. One input row is the GEMV (memory-bound) case: a 1 × 4
//! tile streams each weight byte once.
//!
//! Canonical arithmetic (what makes a row's result independent of its batch, of the tile
//! it lands in and of how outputs are split across threads): for output `(m, o)`, lane
//! `l` accumulates `fma(acc, w[o, 4c + l], x[m, 4c + l])` for chunks `c = 0, 1, …` in
//! order, the last chunk zero-padded; the four lanes are summed by `faddp` pairs
//! (`(l0 + l1) + (l2 + l3)`); then the [`Epilogue`] applies. `w` is the exact widened
//! value (q8: the raw code, its row scale is applied once by the epilogue; Q4_0: the f32
//! product `(code − 8) · d`, as the reference dequantizes).

use core::arch::aarch64::*;

use crate::half::{bf16_to_f32, f16_to_f32, q4_scale, q4_value, widen8};
use crate::{Epilogue, Mat, MatMut, Q4_BLOCK, Q4_BLOCK_BYTES};

/// Reads 8 consecutive widened weights of one row, and single weights for tails.
pub(crate) trait Loader {
    /// Weights `o, k..k+8` (`k` a multiple of 8, `k + 8 ≤ cols`, `o < rows`).
    ///
    /// # Safety
    /// The indices must be in bounds (the constructors checked the storage length).
    unsafe fn load8(&self, o: usize, k: usize) -> [float32x4_t; 2];
    /// Weight `o, k`, widened exactly as `load8` would.
    fn scalar(&self, o: usize, k: usize) -> f32;
}

pub(crate) struct F32Rows<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) cols: usize,
}

impl Loader for F32Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> [float32x4_t; 2] {
        debug_assert!(o * self.cols + k + 8 <= self.data.len());
        // SAFETY: in bounds per the caller.
        unsafe {
            let p = self.data.as_ptr().add(o * self.cols + k);
            [vld1q_f32(p), vld1q_f32(p.add(4))]
        }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        self.data[o * self.cols + k]
    }
}

pub(crate) struct F16Rows<'a> {
    pub(crate) data: &'a [u16],
    pub(crate) cols: usize,
}

impl Loader for F16Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> [float32x4_t; 2] {
        debug_assert!(o * self.cols + k + 8 <= self.data.len());
        // SAFETY: in bounds per the caller.
        let (lo, hi) = widen8(unsafe { vld1q_u16(self.data.as_ptr().add(o * self.cols + k)) });
        [lo, hi]
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        f16_to_f32(self.data[o * self.cols + k])
    }
}

pub(crate) struct Bf16Rows<'a> {
    pub(crate) data: &'a [u16],
    pub(crate) cols: usize,
}

impl Loader for Bf16Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> [float32x4_t; 2] {
        debug_assert!(o * self.cols + k + 8 <= self.data.len());
        // SAFETY: in bounds per the caller; bf16 widening is a 16-bit left shift.
        unsafe {
            let h = vld1q_u16(self.data.as_ptr().add(o * self.cols + k));
            [
                vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
            ]
        }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        bf16_to_f32(self.data[o * self.cols + k])
    }
}

/// q8 codes as f32, unscaled: the row scale is applied by the [`Epilogue`].
pub(crate) struct Q8Rows<'a> {
    pub(crate) codes: &'a [i8],
    pub(crate) cols: usize,
}

impl Loader for Q8Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> [float32x4_t; 2] {
        debug_assert!(o * self.cols + k + 8 <= self.codes.len());
        // SAFETY: in bounds per the caller; 8 codes in one 64-bit load.
        unsafe {
            let q = vmovl_s8(vld1_s8(self.codes.as_ptr().add(o * self.cols + k)));
            [vcvtq_f32_s32(vmovl_s16(vget_low_s16(q))), vcvtq_f32_s32(vmovl_high_s16(q))]
        }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        self.codes[o * self.cols + k] as f32
    }
}

pub(crate) struct Q4Rows<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) row_bytes: usize,
}

impl Loader for Q4Rows<'_> {
    #[inline(always)]
    unsafe fn load8(&self, o: usize, k: usize) -> [float32x4_t; 2] {
        let block = o * self.row_bytes + (k / Q4_BLOCK) * Q4_BLOCK_BYTES;
        let j = k % Q4_BLOCK;
        debug_assert!(block + Q4_BLOCK_BYTES <= self.data.len());
        // SAFETY: the block lies inside row `o` (k < cols ≤ blocks·32); bytes
        // 2 + j%16 .. + 8 lie inside its 16 nibble bytes.
        unsafe {
            let p = self.data.as_ptr().add(block);
            let d = vdupq_n_f32(f16_to_f32(u16::from_le_bytes([*p, *p.add(1)])));
            let bytes = vld1_u8(p.add(2 + j % 16));
            let nib = if j < 16 { vand_u8(bytes, vdup_n_u8(0x0f)) } else { vshr_n_u8::<4>(bytes) };
            let v = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(nib)), vdupq_n_s16(8));
            [vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(v))), d), vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(v)), d)]
        }
    }

    #[inline(always)]
    fn scalar(&self, o: usize, k: usize) -> f32 {
        let start = o * self.row_bytes + (k / Q4_BLOCK) * Q4_BLOCK_BYTES;
        let block = &self.data[start..start + Q4_BLOCK_BYTES];
        q4_value(block, k % Q4_BLOCK) as f32 * q4_scale(block)
    }
}

/// `k` values starting at `p`, zero-padded to 8.
#[inline(always)]
fn padded<F: Fn(usize) -> f32>(n: usize, f: F) -> [f32; 8] {
    let mut t = [0.0f32; 8];
    for (i, v) in t.iter_mut().enumerate().take(n) {
        *v = f(i);
    }
    t
}

/// One `MR × NR` tile: `out[i][j] = x[m0+i] · w[o0+j]` in canonical order.
///
/// # Safety
/// `m0 + MR ≤ x.rows`, `o0 + NR` ≤ the loader's rows, `x` checked, `x.cols` the loader's
/// columns.
#[inline(always)]
pub(crate) unsafe fn tile<const MR: usize, const NR: usize, L: Loader>(
    x: &Mat<'_>,
    m0: usize,
    w: &L,
    o0: usize,
    out: &mut [[f32; NR]; MR],
) {
    let k = x.cols;
    let k8 = k - k % 8;
    // SAFETY: every x load is inside rows m0..m0+MR (checked matrix, kk + 8 ≤ k8 ≤ cols);
    // weight loads per the caller's bounds.
    unsafe {
        let mut xp = [core::ptr::null::<f32>(); MR];
        for (i, p) in xp.iter_mut().enumerate() {
            *p = x.data.as_ptr().add((m0 + i) * x.stride);
        }
        let mut acc = [[vdupq_n_f32(0.0); NR]; MR];
        let mut kk = 0;
        while kk < k8 {
            let mut wv = [[vdupq_n_f32(0.0); 2]; NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = w.load8(o0 + j, kk);
            }
            for i in 0..MR {
                let x0 = vld1q_f32(xp[i].add(kk));
                let x1 = vld1q_f32(xp[i].add(kk + 4));
                for j in 0..NR {
                    acc[i][j] = vfmaq_f32(acc[i][j], wv[j][0], x0);
                    acc[i][j] = vfmaq_f32(acc[i][j], wv[j][1], x1);
                }
            }
            kk += 8;
        }
        let rem = k - k8;
        if rem > 0 {
            let mut wt = [[0.0f32; 8]; NR];
            for (j, t) in wt.iter_mut().enumerate() {
                *t = padded(rem, |c| w.scalar(o0 + j, k8 + c));
            }
            for i in 0..MR {
                let xt = padded(rem, |c| *xp[i].add(k8 + c));
                for j in 0..NR {
                    acc[i][j] = vfmaq_f32(acc[i][j], vld1q_f32(wt[j].as_ptr()), vld1q_f32(xt.as_ptr()));
                    if rem > 4 {
                        acc[i][j] =
                            vfmaq_f32(acc[i][j], vld1q_f32(wt[j].as_ptr().add(4)), vld1q_f32(xt.as_ptr().add(4)));
                    }
                }
            }
        }
        for i in 0..MR {
            for j in 0..NR {
                out[i][j] = vaddvq_f32(acc[i][j]);
            }
        }
    }
}

/// Runs the tile grid over all rows of `x` × weight rows `0..n`, finishing with `ep`.
///
/// # Safety
/// The loader covers `n` rows of `x.cols` columns; `x` and `y` are checked, `y` is
/// `x.rows × n` (or wider), `ep` covers `n` outputs.
#[inline(always)]
pub(crate) unsafe fn grid<L: Loader>(x: &Mat<'_>, w: &L, n: usize, ep: &Epilogue<'_>, y: &mut MatMut<'_>) {
    macro_rules! go {
        ($mr:literal, $nr:literal, $m0:expr, $o0:expr) => {{
            let mut out = [[0.0f32; $nr]; $mr];
            // SAFETY: forwarded; the tile lies inside x and the loader's rows.
            unsafe { tile::<$mr, $nr, L>(x, $m0, w, $o0, &mut out) };
            for (i, row) in out.iter().enumerate() {
                let yrow = y.row_mut($m0 + i);
                for (j, &s) in row.iter().enumerate() {
                    ep.finish($o0 + j, s, &mut yrow[$o0 + j]);
                }
            }
        }};
    }
    let m = x.rows;
    let mut m0 = 0;
    while m0 < m {
        let mr = (m - m0).min(4);
        let mut o = 0;
        while o < n {
            let nr = (n - o).min(4);
            match (mr, nr) {
                (1, 1) => go!(1, 1, m0, o),
                (1, 2) => go!(1, 2, m0, o),
                (1, 3) => go!(1, 3, m0, o),
                (1, _) => go!(1, 4, m0, o),
                (2, 1) => go!(2, 1, m0, o),
                (2, 2) => go!(2, 2, m0, o),
                (2, 3) => go!(2, 3, m0, o),
                (2, _) => go!(2, 4, m0, o),
                (3, 1) => go!(3, 1, m0, o),
                (3, 2) => go!(3, 2, m0, o),
                (3, 3) => go!(3, 3, m0, o),
                (3, _) => go!(3, 4, m0, o),
                (_, 1) => go!(4, 1, m0, o),
                (_, 2) => go!(4, 2, m0, o),
                (_, 3) => go!(4, 3, m0, o),
                (_, _) => go!(4, 4, m0, o),
            }
            o += nr;
        }
        m0 += mr;
    }
}

fn check_shapes(x: &Mat<'_>, n: usize, ep: &Epilogue<'_>, y: &MatMut<'_>) {
    x.check();
    y.check();
    ep.check(n);
    assert!(y.rows >= x.rows && y.cols >= n, "y is {}x{}, needs {}x{n}", y.rows, y.cols, x.rows);
}

/// `y[m, o] = ep(Σ_k x[m, k] · w[o, k])` for f32 weights `w` (`n × x.cols`, row-major).
///
/// Panics if a slice is shorter than its shape says.
pub fn gemm_f32(x: Mat<'_>, w: &[f32], n: usize, ep: &Epilogue<'_>, mut y: MatMut<'_>) {
    check_shapes(&x, n, ep, &y);
    assert!(w.len() >= n * x.cols, "f32 weights too short");
    // SAFETY: shapes checked above.
    unsafe { grid(&x, &F32Rows { data: w, cols: x.cols }, n, ep, &mut y) }
}

/// As [`gemm_f32`] for f16 weights (bit patterns), widened exactly with `fcvtl`.
pub fn gemm_f16(x: Mat<'_>, w: &[u16], n: usize, ep: &Epilogue<'_>, mut y: MatMut<'_>) {
    check_shapes(&x, n, ep, &y);
    assert!(w.len() >= n * x.cols, "f16 weights too short");
    // SAFETY: shapes checked above.
    unsafe { grid(&x, &F16Rows { data: w, cols: x.cols }, n, ep, &mut y) }
}

/// As [`gemm_f32`] for bf16 weights (bit patterns).
pub fn gemm_bf16(x: Mat<'_>, w: &[u16], n: usize, ep: &Epilogue<'_>, mut y: MatMut<'_>) {
    check_shapes(&x, n, ep, &y);
    assert!(w.len() >= n * x.cols, "bf16 weights too short");
    // SAFETY: shapes checked above.
    unsafe { grid(&x, &Bf16Rows { data: w, cols: x.cols }, n, ep, &mut y) }
}

/// As [`gemm_f32`] for q8 codes; the dot product is over the raw codes, so pass the row
/// scales as `ep.scales`.
pub fn gemm_q8(x: Mat<'_>, codes: &[i8], n: usize, ep: &Epilogue<'_>, mut y: MatMut<'_>) {
    check_shapes(&x, n, ep, &y);
    assert!(codes.len() >= n * x.cols, "q8 codes too short");
    // SAFETY: shapes checked above.
    unsafe { grid(&x, &Q8Rows { codes, cols: x.cols }, n, ep, &mut y) }
}

/// As [`gemm_f32`] for Q4_0 weights: `n` rows of `ceil(cols/32)` 18-byte blocks.
pub fn gemm_q4(x: Mat<'_>, blocks: &[u8], n: usize, ep: &Epilogue<'_>, mut y: MatMut<'_>) {
    check_shapes(&x, n, ep, &y);
    let row_bytes = x.cols.div_ceil(Q4_BLOCK) * Q4_BLOCK_BYTES;
    assert!(blocks.len() >= n * row_bytes, "q4 blocks too short");
    // SAFETY: shapes checked above.
    unsafe { grid(&x, &Q4Rows { data: blocks, row_bytes }, n, ep, &mut y) }
}

/// `Σ a[i] · b[i]` over the common length, in the canonical linear order.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let x = Mat { data: a, rows: 1, cols: n, stride: n };
    let mut out = [[0.0f32; 1]; 1];
    // SAFETY: one row of `n` columns of `a` and of `b`.
    unsafe { tile::<1, 1, _>(&x, 0, &F32Rows { data: b, cols: n }, 0, &mut out) };
    out[0][0]
}
