//! `y (+)= alpha · x·Wt` for a weight a kind keeps transposed (`Wt` is `k × n`), behind
//! the plugin ABI's `HostKernelsExt::linear_t`.
//!
//! Why a kernel of its own: the expand step of a low-rank adapter multiplies by `B`
//! (`out × rank`), a reduction of length `rank ≤ 64`. Through the `[out, in]` linear
//! kernel that is a short reduction whose weight panel is transposed into scratch on every
//! call — at batch 1 as much work as the product itself. A kind that transposes `B` once
//! at load hands `Bᵀ` here, and the outputs go straight into the SIMD lanes: for each
//! output block, `acc = fma(x[m, k], Wt[k, o..o+8], acc)` for k = 0, 1, …, K−1 from zero,
//! then `y = alpha·acc` or `y += alpha·acc`.
//!
//! Every output is one sequential chain over `k` in every path (vector block, 8-wide
//! remainder, scalar tail), so a row's result never depends on the batch, on `n`, or on
//! which block it landed in. SIMD levels fuse the multiply-add (as the AVX2/NEON linear
//! kernels do); the scalar level multiplies then adds, like the scalar reference linear.

use crate::kernels::Level;
use crate::view::{MatMut, MatRef};

/// Output columns per block of the portable path.
const BLOCK: usize = 64;

/// Runs the kernel for `level`. Shapes must agree: `x` is `m × k`, `wt` is `k × n`, `y` is
/// `m × n` (the ABI wrapper checks them).
pub(super) fn linear_t(level: Level, x: MatRef<'_>, wt: MatRef<'_>, alpha: f32, accumulate: bool, y: MatMut<'_>) {
    debug_assert!(x.cols() == wt.rows() && y.cols() == wt.cols() && x.rows() == y.rows());
    match level {
        Level::Scalar => portable::<false>(x, wt, alpha, accumulate, y),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 | Level::Avx512Vnni if level.is_available() => {
            // SAFETY: the level (AVX2, FMA and F16C, which every AVX-512 level includes)
            // was just checked on this CPU; shapes per this function's contract.
            unsafe { avx2::linear_t(x, wt, alpha, accumulate, y) }
        }
        // NEON levels (and any level without a vector path here): FMA chains, which LLVM
        // vectorizes across the output block.
        _ => portable::<true>(x, wt, alpha, accumulate, y),
    }
}

/// Blocks of [`BLOCK`] outputs accumulated in a stack array; `FUSED` selects `mul_add`.
fn portable<const FUSED: bool>(x: MatRef<'_>, wt: MatRef<'_>, alpha: f32, accumulate: bool, mut y: MatMut<'_>) {
    let n = wt.cols();
    for m in 0..x.rows() {
        let xr = x.row(m);
        let yr = y.row_mut(m);
        let mut o0 = 0;
        while o0 < n {
            let width = (n - o0).min(BLOCK);
            let mut acc = [0f32; BLOCK];
            let acc = &mut acc[..width];
            for (k, &xv) in xr.iter().enumerate() {
                for (a, &w) in acc.iter_mut().zip(&wt.row(k)[o0..o0 + width]) {
                    *a = if FUSED { xv.mul_add(w, *a) } else { *a + xv * w };
                }
            }
            for (yv, &a) in yr[o0..o0 + width].iter_mut().zip(acc.iter()) {
                *yv = if accumulate { *yv + alpha * a } else { alpha * a };
            }
            o0 += width;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    use crate::view::{MatMut, MatRef};

    /// Outputs per panel (a multiple of 32).
    const PANEL: usize = 256;

    /// See the module docs.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `x` is `m × k`, `wt` is `k × n`, `y` is `m × n`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn linear_t(x: MatRef<'_>, wt: MatRef<'_>, alpha: f32, accumulate: bool, mut y: MatMut<'_>) {
        let (m, n) = (x.rows(), wt.cols());
        let n8 = n - n % 8;
        // Panels of PANEL outputs: every row of the batch runs over one panel of `Wt`
        // (k × PANEL floats, L1-sized for LoRA ranks) before the next is touched.
        let mut p0 = 0;
        while p0 < n8 {
            let p1 = (p0 + PANEL).min(n8);
            let mut mi = 0;
            while mi < m {
                let pair = mi + 1 < m;
                let mut o = p0;
                // SAFETY: for every call below, AVX2/FMA per the contract,
                // `o + 8·NV <= p1 <= n8 <= n` and rows `mi..mi + R` exist.
                unsafe {
                    while o + 32 <= p1 {
                        if pair {
                            block::<4, 2>(&x, &wt, mi, o, alpha, accumulate, &mut y);
                        } else {
                            block::<4, 1>(&x, &wt, mi, o, alpha, accumulate, &mut y);
                        }
                        o += 32;
                    }
                    while o < p1 {
                        if pair {
                            block::<1, 2>(&x, &wt, mi, o, alpha, accumulate, &mut y);
                        } else {
                            block::<1, 1>(&x, &wt, mi, o, alpha, accumulate, &mut y);
                        }
                        o += 8;
                    }
                }
                mi += if pair { 2 } else { 1 };
            }
            p0 = p1;
        }
        // The last `n mod 8` outputs.
        for r in 0..m {
            let xr = x.row(r);
            let yr = y.row_mut(r);
            for (o, yv) in yr.iter_mut().enumerate().take(n).skip(n8) {
                let mut acc = 0f32;
                for (k, &xv) in xr.iter().enumerate() {
                    // `mul_add` is one FMA here (the feature is enabled), exactly as a
                    // vector lane computes it.
                    acc = xv.mul_add(wt.row(k)[o], acc);
                }
                *yv = if accumulate { *yv + alpha * acc } else { alpha * acc };
            }
        }
    }

    /// Outputs `o..o + 8·NV` of rows `mi..mi + R`.
    ///
    /// # Safety
    /// AVX2/FMA; `o + 8·NV <= wt.cols() == y.cols()`; `mi + R <= x.rows() == y.rows()`.
    #[inline(always)]
    unsafe fn block<const NV: usize, const R: usize>(
        x: &MatRef<'_>,
        wt: &MatRef<'_>,
        mi: usize,
        o: usize,
        alpha: f32,
        accumulate: bool,
        y: &mut MatMut<'_>,
    ) {
        // SAFETY: every load reads `wt` row `k < wt.rows()` at columns `o..o + 8·NV`
        // within its `cols`, or `x` row `mi + r` at `k < x.cols()`; every store writes `y`
        // row `mi + r` at columns `o..o + 8·NV` (per the contract).
        unsafe {
            let mut xp = [core::ptr::null::<f32>(); R];
            for (r, p) in xp.iter_mut().enumerate() {
                *p = x.row(mi + r).as_ptr();
            }
            let mut acc = [[_mm256_setzero_ps(); NV]; R];
            for k in 0..x.cols() {
                let w = wt.row(k).as_ptr().add(o);
                let mut wv = [_mm256_setzero_ps(); NV];
                for (v, slot) in wv.iter_mut().enumerate() {
                    *slot = _mm256_loadu_ps(w.add(8 * v));
                }
                for r in 0..R {
                    let xv = _mm256_set1_ps(*xp[r].add(k));
                    for v in 0..NV {
                        acc[r][v] = _mm256_fmadd_ps(xv, wv[v], acc[r][v]);
                    }
                }
            }
            let av = _mm256_set1_ps(alpha);
            for (r, row_acc) in acc.iter().enumerate() {
                let dst = y.row_mut(mi + r).as_mut_ptr().add(o);
                for (v, &a) in row_acc.iter().enumerate() {
                    let d = dst.add(8 * v);
                    let scaled = _mm256_mul_ps(av, a);
                    let out = if accumulate { _mm256_add_ps(_mm256_loadu_ps(d), scaled) } else { scaled };
                    _mm256_storeu_ps(d, out);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use abi_stable::std_types::RSliceMut;
    use graft_plugin_abi::{KernelStatus, MatView, MatViewMut, WeightView};

    use crate::adapters::host_kernels;
    use crate::kernels::Level;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every level this CPU runs: `linear_t` against an f64 reference within the `γ_K`
    /// bound, rows independent of the batch (bit for bit), `accumulate` adding exactly
    /// `alpha·x·Wt` to what was there, strided views, and shape errors.
    #[test]
    fn matches_an_f64_reference_at_every_level() {
        let levels: Vec<Level> = Level::ALL.into_iter().filter(|l| l.is_available()).collect();
        assert!(levels.contains(&Level::Scalar));
        for &level in &levels {
            let table = host_kernels(level);
            let linear_t = table.linear_t().expect("the host fills linear_t");
            for (m, k, n) in
                [(1, 1, 1), (1, 8, 512), (2, 16, 33), (3, 4, 7), (5, 64, 100), (256, 8, 64), (4, 33, 40), (3, 16, 300)]
            {
                let x = values(m * k, 1 + m as u64);
                let stride = n + 3;
                let wt = values(k * stride, 7 + n as u64);
                let alpha = 1.75f32;
                let y0 = values(m * n, 3);
                let xv = MatView::new(&x, m, k, k).unwrap();
                let wv = MatView::new(&wt, k, n, stride).unwrap();
                for accumulate in [false, true] {
                    let mut y = y0.clone();
                    let status = linear_t(xv, wv, alpha, accumulate, MatViewMut::new(&mut y, m, n, n).unwrap());
                    assert_eq!(status, KernelStatus::OK);
                    for i in 0..m {
                        for o in 0..n {
                            let (mut dot, mut mag) = (0f64, 0f64);
                            for kk in 0..k {
                                let p = f64::from(x[i * k + kk]) * f64::from(wt[kk * stride + o]);
                                dot += p;
                                mag += p.abs();
                            }
                            let base = if accumulate { f64::from(y0[i * n + o]) } else { 0.0 };
                            let want = base + f64::from(alpha) * dot;
                            let u = f64::from(f32::EPSILON) / 2.0;
                            let bound = (k as f64 + 2.0) * u * f64::from(alpha) * mag + 2.0 * u * want.abs();
                            let got = f64::from(y[i * n + o]);
                            assert!((got - want).abs() <= bound, "{level} {m}x{k}x{n} ({i},{o}): {got} vs {want}");
                        }
                    }
                    // One row alone gives the same bits as inside the batch.
                    let last = m - 1;
                    let mut alone = y0[last * n..(last + 1) * n].to_vec();
                    let x1 = MatView::new(&x[last * k..], 1, k, k).unwrap();
                    linear_t(x1, wv, alpha, accumulate, MatViewMut::new(&mut alone, 1, n, n).unwrap());
                    let batch: Vec<u32> = y[last * n..].iter().map(|v| v.to_bits()).collect();
                    assert_eq!(batch, alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{level} {m}x{k}x{n}");
                }
            }
            // Shapes that disagree are refused, not read.
            let x = [0f32; 6];
            let mut y = [0f32; 4];
            let status = linear_t(
                MatView::new(&x, 2, 3, 3).unwrap(),
                MatView::new(&x, 2, 2, 2).unwrap(),
                1.0,
                false,
                MatViewMut::new(&mut y, 2, 2, 2).unwrap(),
            );
            assert_eq!(status, KernelStatus::SHAPE_MISMATCH);
        }
    }

    /// The expand through `linear_t` with `Bᵀ` and through `linear` with `B` (what a host
    /// without `linear_t` runs) agree within the f32 bound at every level.
    #[test]
    fn agrees_with_the_linear_kernel_on_the_stored_b() {
        for level in Level::ALL.into_iter().filter(|l| l.is_available()) {
            let table = host_kernels(level);
            let (m, r, out) = (3, 16, 70);
            let t = values(m * r, 5);
            let b = values(out * r, 6);
            let mut bt = vec![0f32; r * out];
            for o in 0..out {
                for k in 0..r {
                    bt[k * out + o] = b[o * r + k];
                }
            }
            let wv = WeightView::f32(&b, out, r).unwrap();
            let mut scratch = vec![0f32; (table.scratch_floats())(wv, m)];
            let (mut y1, mut y2) = (vec![0.5f32; m * out], vec![0.5f32; m * out]);
            let tv = MatView::new(&t, m, r, r).unwrap();
            (table.linear())(
                tv,
                wv,
                1.0,
                true,
                MatViewMut::new(&mut y1, m, out, out).unwrap(),
                RSliceMut::from_mut_slice(&mut scratch),
            );
            (table.linear_t().unwrap())(
                tv,
                MatView::new(&bt, r, out, out).unwrap(),
                1.0,
                true,
                MatViewMut::new(&mut y2, m, out, out).unwrap(),
            );
            for (a, b) in y1.iter().zip(&y2) {
                assert!((a - b).abs() <= 1e-5, "{level}: {a} vs {b}");
            }
        }
    }
}
