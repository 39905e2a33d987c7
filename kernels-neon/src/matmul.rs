//! Dense f32 matrix products of two values, `c[m, n] = a[m, k] · b[k, n]`, all
//! contiguous row-major.
//!
//! Algorithm: for each row `i` of `a`, the columns of `c` go 16 at a time (four 4-lane
//! accumulators held in registers across the whole `k` loop), then 4 at a time, then
//! the last `n mod 4` one by one. Every accumulator does
//! `acc = fma(a[i, p], b[p, j..j+4], acc)` for `p = 0, 1, …, k−1` from zero — the
//! reference's sequential sum over `p`, with each multiply-add fused (one rounding
//! instead of two), exactly what graft's AVX2 kernel does with 8 lanes. The tail columns
//! use the reference's unfused `s += a · b`. So every output is the reference's sum up to
//! FMA rounding: `|c − c_ref| ≤ k · 2⁻²⁴ · Σ_p |a[i, p] · b[p, j]|`. Each output depends
//! only on its row of `a` and column of `b`, never on `m` or the blocking of other rows.

use core::arch::aarch64::*;

/// `c[m, n] = a[m, k] · b[k, n]` (`c` overwritten). Panics unless `a`, `b` and `c` hold
/// at least `m·k`, `k·n` and `m·n` values.
pub fn matmul(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "matmul operands too short");
    let n4 = n - n % 4;
    let (bp, cp) = (b.as_ptr(), c.as_mut_ptr());
    for i in 0..m {
        let arow = &a[i * k..(i + 1) * k];
        let mut j = 0;
        // SAFETY: column indices stay below n (j + 16 ≤ n4, j + 4 ≤ n4), row indices below
        // m and k; the lengths were checked above. Register-only arithmetic otherwise.
        unsafe {
            let crow = cp.add(i * n);
            while j + 16 <= n4 {
                let mut acc = [vdupq_n_f32(0.0); 4];
                for (q, &av) in arow.iter().enumerate() {
                    let brow = bp.add(q * n + j);
                    let av = vdupq_n_f32(av);
                    for (t, acc) in acc.iter_mut().enumerate() {
                        *acc = vfmaq_f32(*acc, av, vld1q_f32(brow.add(4 * t)));
                    }
                }
                for (t, acc) in acc.iter().enumerate() {
                    vst1q_f32(crow.add(j + 4 * t), *acc);
                }
                j += 16;
            }
            while j < n4 {
                let mut acc = vdupq_n_f32(0.0);
                for (q, &av) in arow.iter().enumerate() {
                    acc = vfmaq_f32(acc, vdupq_n_f32(av), vld1q_f32(bp.add(q * n + j)));
                }
                vst1q_f32(crow.add(j), acc);
                j += 4;
            }
            for j in n4..n {
                let mut s = 0.0f32;
                for (q, &av) in arow.iter().enumerate() {
                    s += av * *bp.add(q * n + j);
                }
                *crow.add(j) = s;
            }
        }
    }
}
