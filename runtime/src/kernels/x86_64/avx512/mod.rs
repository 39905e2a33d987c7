//! x86-64 AVX-512 kernels (F, BW, DQ, VL on top of AVX2 + FMA + F16C), selected at
//! runtime for the `avx512` and `avx512-vnni` levels.
//!
//! 512-bit code where it pays: linear layers (16-lane FMA tiles over every weight
//! format, q4 decoded by table lookup), embedding bags (16 lanes, masked tails),
//! element-wise ops, dot products and layer norm. Softmax, value × value matrix products
//! and unary math run the AVX2 kernels (they are bound by `exp` or by short rows, where
//! wider vectors buy little), reductions the scalar reference, as at AVX2; every
//! AVX-512 CPU runs AVX2 code. The two levels share these float kernels; the
//! `avx512-vnni` table differs in its int8 linear (`vpdpbusd`).
//!
//! Soundness: an [`Avx512`] is only reachable through [`AVX512`] and [`AVX512_VNNI`],
//! which `x86_64::table` hands out only after `kernels::select` checked `cpu_has` for
//! the level — and both levels require AVX-512 F/BW/DQ/VL, AVX2, FMA and F16C. That check
//! is what makes every `unsafe` call into a `#[target_feature]` function below sound.

mod bag;
mod elementwise;
mod linear;

use super::{int8, tensor};
use crate::graph::{Activation, BagMode, UnaryOp};
use crate::kernels::{
    DotKernel, ElementwiseKernel, EmbeddingBagKernel, Kernels, Level, LinearKernel, MatMulKernel, NormKernel,
    SoftmaxKernel, UnaryKernel, WeightMatrix,
};
use crate::view::{MatMut, MatRef};

/// The AVX-512 kernels. Constructed only in the statics below.
#[derive(Debug)]
pub(crate) struct Avx512(());

/// The `avx512` table.
pub(super) static AVX512: Kernels = Kernels {
    level: Level::Avx512,
    linear: &Avx512(()),
    bag: &Avx512(()),
    elementwise: &Avx512(()),
    dot: &Avx512(()),
    norm: &Avx512(()),
    softmax: &Avx512(()),
    reduce: &crate::kernels::scalar::Scalar,
    matmul: &Avx512(()),
    unary: &Avx512(()),
    int8: Some(&int8::AVX512),
};

/// The `avx512-vnni` table: the same float kernels, the VNNI int8 linear.
pub(super) static AVX512_VNNI: Kernels = Kernels {
    level: Level::Avx512Vnni,
    linear: &Avx512(()),
    bag: &Avx512(()),
    elementwise: &Avx512(()),
    dot: &Avx512(()),
    norm: &Avx512(()),
    softmax: &Avx512(()),
    reduce: &crate::kernels::scalar::Scalar,
    matmul: &Avx512(()),
    unary: &Avx512(()),
    int8: Some(&int8::AVX512_VNNI),
};

impl LinearKernel for Avx512 {
    fn scratch_len(&self, w: &WeightMatrix<'_>, rows: usize) -> usize {
        linear::scratch_len(w, rows)
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
        // SAFETY: an `Avx512` is only reachable after the AVX-512 check (module docs).
        unsafe { linear::linear(x, w, bias, act, None, y, scratch) }
    }

    fn linear_accumulate(&self, x: MatRef<'_>, w: &WeightMatrix<'_>, alpha: f32, y: MatMut<'_>, scratch: &mut [f32]) {
        // SAFETY: as for `linear`.
        unsafe { linear::linear(x, w, None, None, Some(alpha), y, scratch) }
    }
}

impl EmbeddingBagKernel for Avx512 {
    fn bag(&self, table: &WeightMatrix<'_>, ids: &[i64], mode: BagMode, out: &mut [f32]) {
        // SAFETY: features checked before this table was handed out; the engine
        // validates ids before running.
        unsafe { bag::bag(table, ids, mode, out) }
    }

    fn prefetch(&self, table: &WeightMatrix<'_>, ids: &[i64]) {
        // Prefetching is the same baseline instruction at every x86-64 level: share the
        // AVX2 table's policy.
        super::AVX2.bag.prefetch(table, ids);
    }
}

impl ElementwiseKernel for Avx512 {
    fn activate(&self, act: Activation, x: &mut [f32]) {
        // SAFETY: features checked before this table was handed out.
        unsafe { elementwise::activate(act, x) }
    }

    fn add(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        // SAFETY: as above.
        unsafe { elementwise::add(a, b, y) }
    }

    fn mul(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        // SAFETY: as above.
        unsafe { elementwise::mul(a, b, y) }
    }
}

impl DotKernel for Avx512 {
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as above.
        unsafe { elementwise::dot(a, b) }
    }
}

impl NormKernel for Avx512 {
    fn layer_norm(&self, x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, y: &mut [f32]) {
        // SAFETY: as above.
        unsafe { elementwise::layer_norm(x, gamma, beta, eps, y) }
    }
}

impl SoftmaxKernel for Avx512 {
    fn softmax(&self, x: &mut [f32], log: bool) {
        // SAFETY: AVX2 and FMA are part of both AVX-512 levels' checks.
        unsafe { tensor::softmax(x, log) }
    }
}

impl MatMulKernel for Avx512 {
    fn matmul(&self, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
        // SAFETY: as above; `tensor::matmul` checks the lengths.
        unsafe { tensor::matmul(a, b, c, m, k, n) }
    }
}

impl UnaryKernel for Avx512 {
    fn unary(&self, op: UnaryOp, x: &[f32], y: &mut [f32]) {
        // SAFETY: as above.
        unsafe { tensor::unary(op, x, y) }
    }
}
