//! Low-rank adapter steps for a group of rows that share one adapter.
//!
//! Algorithm: a LoRA delta is `y += alpha · (x · Aᵀ) · Bᵀ` with `A` `[r, in]` and `B`
//! `[out, r]`. Rows of a mixed batch are grouped by adapter (the caller's job: graft sorts
//! rows by adapter), and each group runs [`shrink`] (`t = x · Aᵀ`, a GEMM with `r`
//! outputs) then [`expand`] (`y += alpha · t · Bᵀ`, a GEMM with reduction length `r`
//! whose epilogue adds into `y`). Both are the linear kernel's tile with its canonical
//! arithmetic, so a row's delta never depends on the group it was batched with.

use crate::linear::gemm_f32;
use crate::{Epilogue, Mat, MatMut};

/// `t[m, j] = Σ_k x[m, k] · a[j, k]` for `a` of `rank × x.cols`.
pub fn shrink(x: Mat<'_>, a: &[f32], rank: usize, t: MatMut<'_>) {
    gemm_f32(x, a, rank, &Epilogue::default(), t);
}

/// `y[m, o] += alpha · Σ_j t[m, j] · b[o, j]` for `b` of `out × t.cols`.
pub fn expand(t: Mat<'_>, b: &[f32], out: usize, alpha: f32, y: MatMut<'_>) {
    gemm_f32(t, b, out, &Epilogue { accumulate: Some(alpha), ..Epilogue::default() }, y);
}
