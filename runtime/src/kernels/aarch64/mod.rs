//! aarch64 fast paths: three tables over the `graft-kernels-neon` crate, selected at
//! runtime from the detected CPU features.
//!
//! | level | q8 linear (`Q8Math::Exact`) | q8 linear (`Q8Math::Int8`, the default) | everything else |
//! |---|---|---|---|
//! | `neon` | codes widened to f32, FMA, row scale applied once (the AVX2 contract) | as exact (no int8 dot products) | NEON f32 FMA |
//! | `dotprod` | activations split into three int8 digits, exact integer sums with SDOT | one int8 digit, SDOT | as `neon` |
//! | `i8mm` | the same split, exact integer sums with SMMLA (2 × 2 tiles) | one int8 digit, SMMLA | as `neon` |
//!
//! The tensor families are the same NEON code at every level: softmax, log-softmax and
//! log-sum-exp (max-subtracted, vectorized `exp` of the AVX2 `exp8` class, ≤ 2 ulp; within
//! a relative `(n/4 + 16) · 2⁻²⁴` of an exact softmax), `exp` (full range, NaN/±∞ as
//! `expf`), sum/mean/max/min reductions (`max`/`min` exact and NaN-propagating, sums
//! reassociated over 16 lanes), and value × value matmuls (4-wide FMA over `n`, the
//! reference's order over `k`). The other unary and reduce ops use the scalar reference.
//!
//! Contract per level: `neon` matches the scalar reference within the tolerance scaled by
//! the reduction length, like every table. `dotprod` and `i8mm` add, for q8 weights only,
//! the split's own error, `Σ|w_k| · max|x| / (127 · 2¹⁷)` per output (about one f32 ulp
//! of the row's largest activation per unit of weight; `graft_kernels_neon::split`
//! derives it); the two are bit-identical to each other. Every level is deterministic and
//! row-independent. `GRAFT_KERNELS=neon` keeps the strict contract on a CPU that has
//! SDOT/SMMLA.
//!
//! The only way to reach these kernels is [`table`], and its only caller is
//! `kernels::select`, which first checks [`cpu_has`]: that check is what makes the
//! `unsafe` calls into the SDOT and SMMLA paths sound.

mod linear;

use graft_kernels_neon::{act, bag, exp, matmul, reduce, softmax};

use super::{
    DotKernel, ElementwiseKernel, EmbeddingBagKernel, Kernels, Level, LinearKernel, MatMulKernel, NormKernel,
    ReduceKernel, SoftmaxKernel, UnaryKernel, WeightMatrix,
};
use crate::graph::{Activation, BagMode, ReduceOp, UnaryOp};
use crate::kernels::WeightData;
use crate::quant;
use crate::view::{MatMut, MatRef};

/// Whether this CPU has every feature the table of `level` uses.
pub(crate) fn cpu_has(level: Level) -> bool {
    let neon = std::arch::is_aarch64_feature_detected!("neon");
    match level {
        Level::Neon => neon,
        Level::Dotprod => neon && std::arch::is_aarch64_feature_detected!("dotprod"),
        Level::I8mm => neon && std::arch::is_aarch64_feature_detected!("i8mm"),
        _ => false,
    }
}

/// The kernels of one level (`L`: 0 neon, 1 dotprod, 2 i8mm). Constructed only in the
/// statics below, handed out only after detection.
#[derive(Debug)]
pub(crate) struct Neon<const L: u8>(());

static NEON: Kernels = Kernels {
    level: Level::Neon,
    linear: &Neon::<0>(()),
    bag: &Neon::<0>(()),
    elementwise: &Neon::<0>(()),
    dot: &Neon::<0>(()),
    norm: &Neon::<0>(()),
    softmax: &Neon::<0>(()),
    reduce: &Neon::<0>(()),
    matmul: &Neon::<0>(()),
    unary: &Neon::<0>(()),
    int8: None,
};

static DOTPROD: Kernels = Kernels {
    level: Level::Dotprod,
    linear: &Neon::<1>(()),
    bag: &Neon::<1>(()),
    elementwise: &Neon::<1>(()),
    dot: &Neon::<1>(()),
    norm: &Neon::<1>(()),
    softmax: &Neon::<1>(()),
    reduce: &Neon::<1>(()),
    matmul: &Neon::<1>(()),
    unary: &Neon::<1>(()),
    int8: Some(&NeonInt8::<1>(())),
};

static I8MM: Kernels = Kernels {
    level: Level::I8mm,
    linear: &Neon::<2>(()),
    bag: &Neon::<2>(()),
    elementwise: &Neon::<2>(()),
    dot: &Neon::<2>(()),
    norm: &Neon::<2>(()),
    softmax: &Neon::<2>(()),
    reduce: &Neon::<2>(()),
    matmul: &Neon::<2>(()),
    unary: &Neon::<2>(()),
    int8: Some(&NeonInt8::<2>(())),
};

/// The int8 q8 linear ([`super::Q8Math::Int8`]) of the `dotprod` (`L` = 1) and `i8mm`
/// (`L` = 2) levels: one int8 digit per activation through SDOT / SMMLA
/// ([`graft_kernels_neon::int8`]), bit-identical to the scalar int8 reference. Constructed
/// only in the statics above, handed out only after detection.
#[derive(Debug)]
pub(crate) struct NeonInt8<const L: u8>(());

impl<const L: u8> super::int8::Dots for NeonInt8<L> {
    fn dots(
        &self,
        x: &super::int8::Quantized<'_>,
        w: &[i8],
        n: usize,
        k: usize,
        ep: &super::int8::Epilogue<'_>,
        y: &mut MatMut<'_>,
    ) {
        use graft_kernels_neon::q8::IntLevel;
        let level = if L == 2 && x.rows >= 2 { IntLevel::I8mm } else { IntLevel::Dotprod };
        // SAFETY: a `NeonInt8<L>` is only reachable through the `dotprod` (L = 1) or
        // `i8mm` (L = 2) table, handed out after `cpu_has` checked that feature; FEAT_I8MM
        // implies FEAT_DotProd (mandatory from Armv8.4). Shapes come from `int8::linear`.
        unsafe {
            graft_kernels_neon::int8::gemm_i8(level, x.codes, x.rows, x.stride, w, n, k, |m, o, s| {
                ep.finish(m, o, s, y)
            })
        }
    }
}

impl<const L: u8> LinearKernel for NeonInt8<L> {
    fn scratch_len(&self, w: &WeightMatrix<'_>, rows: usize) -> usize {
        super::int8::scratch_len(w, rows)
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
        super::int8::linear(self, x, w, bias, act, None, y, scratch);
    }

    fn linear_accumulate(&self, x: MatRef<'_>, w: &WeightMatrix<'_>, alpha: f32, y: MatMut<'_>, scratch: &mut [f32]) {
        super::int8::linear(self, x, w, None, None, Some(alpha), y, scratch);
    }
}

/// The table of an aarch64 level. Callers must have checked [`cpu_has`].
pub(crate) fn table(level: Level) -> Option<&'static Kernels> {
    debug_assert!(cpu_has(level));
    match level {
        Level::Neon => Some(&NEON),
        Level::Dotprod => Some(&DOTPROD),
        Level::I8mm => Some(&I8MM),
        _ => None,
    }
}

impl<const L: u8> Neon<L> {
    /// The int8 path of this level's q8 linears (`None`: the f32 path).
    const INT: Option<graft_kernels_neon::q8::IntLevel> = match L {
        1 => Some(graft_kernels_neon::q8::IntLevel::Dotprod),
        2 => Some(graft_kernels_neon::q8::IntLevel::I8mm),
        _ => None,
    };
}

impl<const L: u8> LinearKernel for Neon<L> {
    fn scratch_len(&self, w: &WeightMatrix<'_>, rows: usize) -> usize {
        linear::scratch_len(Self::INT, w, rows)
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
        // SAFETY: a `Neon<L>` is only reachable through `table`, after `cpu_has`
        // confirmed the instructions of `INT`.
        unsafe { linear::linear(Self::INT, x, w, bias, act, None, y, scratch) }
    }

    fn linear_accumulate(&self, x: MatRef<'_>, w: &WeightMatrix<'_>, alpha: f32, y: MatMut<'_>, scratch: &mut [f32]) {
        // SAFETY: as for `linear`.
        unsafe { linear::linear(Self::INT, x, w, None, None, Some(alpha), y, scratch) }
    }
}

/// The start of a table's storage and the bytes of one stored row.
fn storage(table: &WeightMatrix<'_>) -> (*const u8, usize) {
    let cols = table.cols;
    match table.data {
        WeightData::F32(d) => (d.as_ptr().cast::<u8>(), cols * 4),
        WeightData::F16(d) | WeightData::Bf16(d) => (d.as_ptr().cast::<u8>(), cols * 2),
        WeightData::Q8 { codes, .. } => (codes.as_ptr().cast::<u8>(), cols),
        WeightData::Q8Rowwise(d) | WeightData::Q4(d) => (d.as_ptr(), table.row_bytes()),
    }
}

impl<const L: u8> EmbeddingBagKernel for Neon<L> {
    fn bag(&self, table: &WeightMatrix<'_>, ids: &[i64], mode: BagMode, out: &mut [f32]) {
        let c = table.cols;
        let out = &mut out[..c];
        out.fill(0.0);
        let (base, row_bytes) = storage(table);
        for (i, &id) in ids.iter().enumerate() {
            if let Some(&next) = ids.get(i + 1) {
                bag::prefetch(base.wrapping_add(next as usize * row_bytes));
            }
            let r = id as usize;
            match table.data {
                WeightData::F32(d) => bag::add_f32(&d[r * c..(r + 1) * c], out),
                WeightData::F16(d) => bag::add_f16(&d[r * c..(r + 1) * c], out),
                WeightData::Bf16(d) => bag::add_bf16(&d[r * c..(r + 1) * c], out),
                WeightData::Q8 { codes, scales } => bag::add_q8(&codes[r * c..(r + 1) * c], scales[r], out),
                WeightData::Q8Rowwise(d) => {
                    let (codes, scale, bias) = quant::q8_rowwise_parts(&d[r * row_bytes..(r + 1) * row_bytes]);
                    bag::add_q8_rowwise(codes, scale, bias, out);
                }
                WeightData::Q4(d) => bag::add_q4(&d[r * row_bytes..(r + 1) * row_bytes], out),
            }
        }
        if mode == BagMode::Mean && !ids.is_empty() {
            bag::divide(out, ids.len() as f32);
        }
    }

    fn prefetch(&self, table: &WeightMatrix<'_>, ids: &[i64]) {
        let (base, row_bytes) = storage(table);
        for &id in ids {
            bag::prefetch(base.wrapping_add(id as usize * row_bytes));
        }
    }
}

impl<const L: u8> ElementwiseKernel for Neon<L> {
    fn activate(&self, a: Activation, x: &mut [f32]) {
        match a {
            Activation::Relu => act::relu(x),
            Activation::Sigmoid => act::sigmoid(x),
            Activation::Silu => act::silu(x),
            // GELU and tanh are rare in recommender towers: the scalar functions.
            other => x.iter_mut().for_each(|v| *v = super::activation::apply(other, *v)),
        }
    }

    fn add(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        act::add(a, b, y);
    }

    fn mul(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        act::mul(a, b, y);
    }
}

impl<const L: u8> DotKernel for Neon<L> {
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        graft_kernels_neon::linear::dot(a, b)
    }
}

impl<const L: u8> NormKernel for Neon<L> {
    fn layer_norm(&self, x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, y: &mut [f32]) {
        act::layer_norm(x, gamma, beta, eps, y);
    }
}

impl<const L: u8> SoftmaxKernel for Neon<L> {
    fn softmax(&self, x: &mut [f32], log: bool) {
        if log { softmax::log_softmax(x) } else { softmax::softmax(x) }
    }
}

impl<const L: u8> ReduceKernel for Neon<L> {
    fn reduce(&self, op: ReduceOp, x: &[f32]) -> f32 {
        match op {
            ReduceOp::Sum => reduce::sum(x),
            // An empty lane gives 0 / 0 = NaN, as the reference.
            ReduceOp::Mean => reduce::sum(x) / x.len() as f32,
            ReduceOp::Max => reduce::max(x),
            ReduceOp::Min => reduce::min(x),
            ReduceOp::LogSumExp => softmax::log_sum_exp(x),
            other => super::scalar::Scalar.reduce(other, x),
        }
    }
}

impl<const L: u8> MatMulKernel for Neon<L> {
    fn matmul(&self, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
        matmul::matmul(a, b, c, m, k, n);
    }
}

impl<const L: u8> UnaryKernel for Neon<L> {
    fn unary(&self, op: UnaryOp, x: &[f32], y: &mut [f32]) {
        if op == UnaryOp::Exp {
            exp::exp(x, y);
        } else {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = super::scalar::unary(op, x);
            }
        }
    }
}
