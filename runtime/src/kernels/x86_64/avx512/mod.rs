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
use crate::graph::{Activation, BagMode};
use crate::kernels::{
    DotKernel, ElementwiseKernel, EmbeddingBagKernel, Kernels, Level, LinearKernel, NormKernel, WeightMatrix,
};
use crate::view::{MatMut, MatRef};

/// The AVX-512 kernels. Constructed only by their `table` (the statics below).
#[derive(Debug)]
pub(crate) struct Avx512(());

/// The `avx512` table.
pub(super) static AVX512: Kernels = Avx512::table(Level::Avx512, &int8::AVX512);

/// The `avx512-vnni` table: the same float kernels, the VNNI int8 linear.
pub(super) static AVX512_VNNI: Kernels = Avx512::table(Level::Avx512Vnni, &int8::AVX512_VNNI);

level_kernels!(Avx512);
