//! x86-64 fast paths, selected at runtime: AVX2 + FMA + F16C here, AVX-512 in
//! [`avx512`] (which reuses the AVX2 kernels it does not widen).
//!
//! The only way to reach these kernels is [`table`], and the only caller of `table` is
//! `kernels::select`, which first checks [`cpu_has`] for the level (every level includes
//! AVX2, FMA and F16C). That check is what makes every `unsafe` call into a
//! `#[target_feature]` function below sound.

/// The kernel table constructor and trait impls of an x86-64 level's unit type `$ty`:
/// every method forwards to the function of the same name in the invoking module's
/// `linear`, `bag`, `elementwise` and `tensor` modules (names resolve where the macro is
/// invoked). Those calls are `unsafe` only for their `#[target_feature]`s: a `$ty` is
/// constructed only by its `table`, whose result `x86_64::table` hands out only after
/// `kernels::select` checked `cpu_has` for the level.
macro_rules! level_kernels {
    ($ty:ident) => {
        impl $ty {
            /// The table of `level`: this type's float kernels and the level's int8 linear.
            const fn table(level: Level, int8: &'static dyn LinearKernel) -> Kernels {
                const K: &$ty = &$ty(());
                Kernels {
                    level,
                    linear: K,
                    bag: K,
                    elementwise: K,
                    dot: K,
                    norm: K,
                    softmax: K,
                    reduce: &crate::kernels::scalar::Scalar,
                    matmul: K,
                    unary: K,
                    int8: Some(int8),
                }
            }
        }

        // SAFETY (every `unsafe` call below): the features were checked before this
        // table was handed out (see `level_kernels`); the engine validates ids and
        // `tensor::matmul` checks its lengths.
        impl LinearKernel for $ty {
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
                // SAFETY: as above.
                unsafe { linear::linear(x, w, bias, act, None, y, scratch) }
            }

            fn linear_accumulate(
                &self,
                x: MatRef<'_>,
                w: &WeightMatrix<'_>,
                alpha: f32,
                y: MatMut<'_>,
                scratch: &mut [f32],
            ) {
                // SAFETY: as above.
                unsafe { linear::linear(x, w, None, None, Some(alpha), y, scratch) }
            }
        }

        impl EmbeddingBagKernel for $ty {
            fn bag(&self, table: &WeightMatrix<'_>, ids: &[i64], mode: BagMode, out: &mut [f32]) {
                // SAFETY: as above.
                unsafe { bag::bag(table, ids, mode, out) }
            }

            fn prefetch(&self, table: &WeightMatrix<'_>, ids: &[i64]) {
                bag::prefetch(table, ids);
            }
        }

        impl ElementwiseKernel for $ty {
            fn activate(&self, act: Activation, x: &mut [f32]) {
                // SAFETY: as above.
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

        impl DotKernel for $ty {
            fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
                // SAFETY: as above.
                unsafe { elementwise::dot(a, b) }
            }
        }

        impl NormKernel for $ty {
            fn layer_norm(&self, x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, y: &mut [f32]) {
                // SAFETY: as above.
                unsafe { elementwise::layer_norm(x, gamma, beta, eps, y) }
            }
        }

        impl crate::kernels::SoftmaxKernel for $ty {
            fn softmax(&self, x: &mut [f32], log: bool) {
                // SAFETY: as above.
                unsafe { tensor::softmax(x, log) }
            }
        }

        impl crate::kernels::MatMulKernel for $ty {
            fn matmul(&self, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
                // SAFETY: as above.
                unsafe { tensor::matmul(a, b, c, m, k, n) }
            }
        }

        impl crate::kernels::UnaryKernel for $ty {
            fn unary(&self, op: crate::graph::UnaryOp, x: &[f32], y: &mut [f32]) {
                // SAFETY: as above.
                unsafe { tensor::unary(op, x, y) }
            }
        }
    };
}

mod avx512;
mod bag;
mod elementwise;
pub(super) mod int8;
mod linear;
mod tensor;

use super::{DotKernel, ElementwiseKernel, EmbeddingBagKernel, Kernels, Level, LinearKernel, NormKernel, WeightMatrix};
use crate::graph::{Activation, BagMode};
use crate::view::{MatMut, MatRef};

/// Whether the CPU has every feature the AVX2 table uses.
pub(crate) fn cpu_has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// Whether the CPU has every feature the AVX-512 tables use (on top of AVX2).
pub(crate) fn cpu_has_avx512() -> bool {
    cpu_has_avx2()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vl")
}

/// Whether the CPU runs the x86-64 `level`.
pub(crate) fn cpu_has(level: Level) -> bool {
    match level {
        Level::Avx2 => cpu_has_avx2(),
        Level::Avx512 => cpu_has_avx512(),
        Level::Avx512Vnni => cpu_has_avx512() && std::is_x86_feature_detected!("avx512vnni"),
        _ => false,
    }
}

/// The AVX2 kernels. Constructed only in [`AVX2`], handed out only after detection.
#[derive(Debug)]
pub(crate) struct Avx2(());

static AVX2: Kernels = Avx2::table(Level::Avx2, &int8::AVX2);

/// The table for an x86-64 `level`. Callers must have checked [`cpu_has`].
pub(crate) fn table(level: Level) -> &'static Kernels {
    debug_assert!(cpu_has(level));
    match level {
        Level::Avx512 => &avx512::AVX512,
        Level::Avx512Vnni => &avx512::AVX512_VNNI,
        _ => &AVX2,
    }
}

level_kernels!(Avx2);
