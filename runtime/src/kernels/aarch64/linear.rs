//! Linear layers on aarch64: graft's views and weight formats mapped onto the slice-based
//! `graft-kernels-neon` GEMMs (algorithm and canonical arithmetic in that crate's
//! `linear` and `q8` module docs).
//!
//! The epilogue (q8 row scale, bias, ReLU or `y += alpha ·`) is fused into the kernel;
//! other activations are applied afterwards with the scalar functions, which is the
//! reference's own order (`act(dot · scale + bias)`). Weights are read in place from the
//! mmap in every format; q8-rowwise (an embedding format, rejected for linears at
//! validation) goes to the reference.

use graft_kernels_neon::q8::{IntLevel, gemm_split, scratch_bytes};
use graft_kernels_neon::split::MAX_COLS;
use graft_kernels_neon::{Epilogue, Mat, MatMut as NeonMatMut, linear as neon};

use crate::graph::Activation;
use crate::kernels::{SCALAR, WeightData, WeightMatrix, activation};
use crate::view::{MatMut, MatRef};

/// Whether a q8 linear of `cols` inputs takes the split int8 path at this level.
fn splits(int: Option<IntLevel>, w: &WeightMatrix<'_>) -> Option<IntLevel> {
    match w.data {
        WeightData::Q8 { .. } if w.cols <= MAX_COLS => int,
        _ => None,
    }
}

/// Floats of scratch `linear` needs.
pub(super) fn scratch_len(int: Option<IntLevel>, w: &WeightMatrix<'_>, _rows: usize) -> usize {
    match w.data {
        WeightData::Q8Rowwise(_) => w.cols,
        _ if splits(int, w).is_some() => scratch_bytes(w.cols).div_ceil(4),
        _ => 0,
    }
}

/// `y = act(x · Wᵀ + b)`, or `y += accumulate · (x · Wᵀ)` when `accumulate` is set
/// (then `bias` and `act` are `None`).
///
/// # Safety
/// The CPU must implement the instructions of `int` (see `IntLevel`); shapes must satisfy
/// the `LinearKernel` contract (`x.cols == w.cols`, `y` is `x.rows × w.rows`, scratch per
/// [`scratch_len`]).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn linear(
    int: Option<IntLevel>,
    x: MatRef<'_>,
    w: &WeightMatrix<'_>,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    accumulate: Option<f32>,
    mut y: MatMut<'_>,
    scratch: &mut [f32],
) {
    let (m, n, k) = (x.rows(), w.rows, w.cols);
    if m == 0 || n == 0 {
        return;
    }
    if let WeightData::Q8Rowwise(_) = w.data {
        match accumulate {
            Some(alpha) => SCALAR.linear.linear_accumulate(x, w, alpha, y, scratch),
            None => SCALAR.linear.linear(x, w, bias, act, y, scratch),
        }
        return;
    }
    assert!(x.cols() == k && y.rows() == m && y.cols() == n, "linear shapes");
    let len = |stride: usize, cols: usize| (m - 1) * stride + cols;
    // SAFETY: a view's rows lie inside one allocation: row r spans
    // ptr + r·stride .. + cols, so the first len(..) elements from ptr are in bounds.
    let xs = unsafe { core::slice::from_raw_parts(x.as_ptr(), len(x.stride(), k)) };
    let (ystride, yptr) = (y.stride(), y.as_mut_ptr());
    // SAFETY: as above; `y` is exclusively borrowed for this call and not used while
    // `ys` is alive.
    let ys = unsafe { core::slice::from_raw_parts_mut(yptr, len(ystride, n)) };
    let xm = Mat { data: xs, rows: m, cols: k, stride: x.stride() };
    let ym = NeonMatMut { data: ys, rows: m, cols: n, stride: ystride };
    let mut ep = Epilogue { scales: None, bias, relu: act == Some(Activation::Relu), accumulate };
    match w.data {
        WeightData::F32(d) => neon::gemm_f32(xm, d, n, &ep, ym),
        WeightData::F16(d) => neon::gemm_f16(xm, d, n, &ep, ym),
        WeightData::Bf16(d) => neon::gemm_bf16(xm, d, n, &ep, ym),
        WeightData::Q4(d) => neon::gemm_q4(xm, d, n, &ep, ym),
        WeightData::Q8 { codes, scales } => {
            ep.scales = Some(scales);
            match splits(int, w) {
                Some(level) => {
                    // A lone row wastes half of every 2 × 2 SMMLA block; SDOT gives the
                    // same bits (the sums are exact) in fewer instructions.
                    let level =
                        if level == IntLevel::I8mm && m == 1 && std::arch::is_aarch64_feature_detected!("dotprod") {
                            IntLevel::Dotprod
                        } else {
                            level
                        };
                    let bytes: &mut [i8] = bytemuck::cast_slice_mut(scratch);
                    // SAFETY: the caller guarantees the CPU runs `int`; the SDOT switch
                    // above checked dotprod itself.
                    unsafe { gemm_split(level, xm, codes, n, &ep, ym, bytes) }
                }
                None => neon::gemm_q8(xm, codes, n, &ep, ym),
            }
        }
        WeightData::Q8Rowwise(_) => {}
    }
    if let Some(a) = act.filter(|&a| a != Activation::Relu) {
        y.for_each_row(|_, row| row.iter_mut().for_each(|v| *v = activation::apply(a, *v)));
    }
}
