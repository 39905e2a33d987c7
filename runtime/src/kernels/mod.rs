//! Compute kernels: one trait per family, a scalar reference, and fast paths chosen once
//! at runtime.
//!
//! Families: [`LinearKernel`] (GEMV/GEMM over every weight format, with in-kernel
//! dequantization), [`EmbeddingBagKernel`] (gather + reduce over table rows),
//! [`ElementwiseKernel`] (activations, add, mul), [`DotKernel`] and [`NormKernel`]. A
//! [`Kernels`] table bundles one implementation of each; [`select`] picks the table for a
//! [`Level`] after checking the CPU, and [`from_env`] honours `GRAFT_KERNELS`
//! (`scalar` forces the reference; `avx2`, `avx512`, `avx512-vnni`, `neon`, `dotprod`,
//! `i8mm` force a fast level
//! and are refused with [`Error::KernelUnavailable`] on a CPU that lacks it). The table is what adapter plugins will be handed, so
//! their math runs at host speed without shipping kernels of their own.
//!
//! Contracts every implementation keeps (and the property tests check):
//! - results match the scalar reference within a tolerance scaled by the reduction length;
//!   embedding bags and element-wise ops that do not reassociate match bit for bit. The
//!   one documented widening: at the aarch64 `dotprod` and `i8mm` levels, q8 linears
//!   split activations into three int8 digits (23 bits of the row's range) for exact
//!   SDOT/SMMLA sums, which adds at most `Σ|w_k| · max|x| / (127 · 2¹⁷)` per output
//!   ([`Level::splits_q8_activations`]; derived in `graft_kernels_neon::split`);
//! - the int8 q8 and q4 linears ([`Kernels::int8`], chosen by [`Q8Math::Int8`]) match the
//!   scalar level's int8 reference bit for bit: activations are quantized per row in one
//!   canonical way and the integer sums are exact (arithmetic and accuracy budget in
//!   `int8.rs`);
//! - an implementation is deterministic, and a row's result never depends on the other
//!   rows of the batch, on the batch size, or on how the work was split across threads.

#[cfg(all(feature = "std", target_arch = "aarch64", target_feature = "neon"))]
mod aarch64;
mod int8;
mod scalar;
mod weights;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod x86_64;

use core::fmt;

pub use int8::{INT8_MAX_K, INT8_MIN_K};
pub use weights::{WeightData, WeightMatrix};

use crate::error::{Error, Result};
use crate::graph::{Activation, BagMode, ReduceOp, UnaryOp};
use crate::view::{MatMut, MatRef};

/// `y = act(x · Wᵀ + bias)` for a weight matrix in any format.
pub trait LinearKernel: Send + Sync {
    /// Floats of scratch space one call with `rows` input rows may use.
    fn scratch_len(&self, w: &WeightMatrix<'_>, rows: usize) -> usize;

    /// Computes `y[m, o] = act(Σ_k x[m, k] · w[o, k] + bias[o])`.
    ///
    /// `x` is `rows × w.cols`, `y` is `rows × w.rows`, `bias` (if any) has `w.rows`
    /// values, and `scratch` holds at least [`LinearKernel::scratch_len`] floats.
    fn linear(
        &self,
        x: MatRef<'_>,
        w: &WeightMatrix<'_>,
        bias: Option<&[f32]>,
        act: Option<Activation>,
        y: MatMut<'_>,
        scratch: &mut [f32],
    );

    /// Computes `y[m, o] += alpha · Σ_k x[m, k] · w[o, k]` — the shrink and expand steps
    /// of low-rank adapters, which add into a layer's output instead of overwriting it.
    ///
    /// Shapes and scratch as for [`LinearKernel::linear`].
    fn linear_accumulate(&self, x: MatRef<'_>, w: &WeightMatrix<'_>, alpha: f32, y: MatMut<'_>, scratch: &mut [f32]);
}

/// Embedding-bag gather and reduction.
pub trait EmbeddingBagKernel: Send + Sync {
    /// Writes into `out[..table.cols]` the sum (or mean) of the rows `ids` of `table`,
    /// added in order. Every id must be in `0..table.rows` (the engine checks first).
    /// An empty bag gives zeros.
    fn bag(&self, table: &WeightMatrix<'_>, ids: &[i64], mode: BagMode, out: &mut [f32]);

    /// Hints that the rows `ids` of `table` will be gathered soon (a later bag of the
    /// batch), so their cache lines and page-table entries can be fetched meanwhile.
    /// Every id must be in `0..table.rows`. The default does nothing.
    fn prefetch(&self, table: &WeightMatrix<'_>, ids: &[i64]) {
        let _ = (table, ids);
    }
}

/// Element-wise operations on rows.
pub trait ElementwiseKernel: Send + Sync {
    /// Applies `act` in place.
    fn activate(&self, act: Activation, x: &mut [f32]);
    /// `y = a + b`.
    fn add(&self, a: &[f32], b: &[f32], y: &mut [f32]);
    /// `y = a ⊙ b`.
    fn mul(&self, a: &[f32], b: &[f32], y: &mut [f32]);
}

/// Dot products.
pub trait DotKernel: Send + Sync {
    /// `Σ a[i] · b[i]` over equal-length slices.
    fn dot(&self, a: &[f32], b: &[f32]) -> f32;
}

/// Normalizations.
pub trait NormKernel: Send + Sync {
    /// `y = (x − mean) / sqrt(var + eps) · gamma + beta` over one row.
    fn layer_norm(&self, x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, y: &mut [f32]);
}

/// Softmax and log-softmax over a contiguous lane.
pub trait SoftmaxKernel: Send + Sync {
    /// `x ← softmax(x)` (or log-softmax) in place; max-subtracted, so large inputs do
    /// not overflow. An empty lane is left alone.
    fn softmax(&self, x: &mut [f32], log: bool);
}

/// Reductions of a contiguous lane to one value.
pub trait ReduceKernel: Send + Sync {
    /// `op` over `x` (mean of an empty lane is NaN, as 0/0).
    fn reduce(&self, op: ReduceOp, x: &[f32]) -> f32;
}

/// Dense row-major matrix products.
pub trait MatMulKernel: Send + Sync {
    /// `c[m, n] = a[m, k] · b[k, n]`, all contiguous row-major (`c` is overwritten).
    fn matmul(&self, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize);
}

/// Element-wise unary math.
pub trait UnaryKernel: Send + Sync {
    /// `y[i] = op(x[i])`; `x` and `y` have the same length.
    fn unary(&self, op: UnaryOp, x: &[f32], y: &mut [f32]);
}

/// An instruction-set level with its own kernel table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Level {
    /// Portable reference kernels.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, DQ, VL) on top of AVX2: 16-lane f32 kernels.
    Avx512,
    /// x86-64 AVX-512 + AVX512-VNNI: the AVX-512 kernels with `vpdpbusd` int8 dot products.
    Avx512Vnni,
    /// aarch64 Advanced SIMD (every aarch64 CPU): f32 FMA, q8 codes widened to f32.
    Neon,
    /// aarch64 NEON + FEAT_DotProd: q8 linears through exact SDOT sums of split
    /// activations (Cortex-A76/A78, Jetson Orin, Neoverse N1).
    Dotprod,
    /// aarch64 NEON + FEAT_I8MM: q8 linears through exact SMMLA sums of split activations
    /// (Neoverse V1/N2, Graviton 3, Cortex-A710).
    I8mm,
}

impl Level {
    /// The name accepted by `GRAFT_KERNELS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Vnni => "avx512-vnni",
            Level::Neon => "neon",
            Level::Dotprod => "dotprod",
            Level::I8mm => "i8mm",
        }
    }

    /// Parses a level name.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "scalar" => Some(Level::Scalar),
            "avx2" => Some(Level::Avx2),
            "avx512" => Some(Level::Avx512),
            "avx512-vnni" => Some(Level::Avx512Vnni),
            "neon" => Some(Level::Neon),
            "dotprod" => Some(Level::Dotprod),
            "i8mm" => Some(Level::I8mm),
            _ => None,
        }
    }

    /// Whether this CPU (and build) can run the level.
    pub fn is_available(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Level::Avx2 | Level::Avx512 | Level::Avx512Vnni => x86_64::cpu_has(self),
            #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
            Level::Avx2 | Level::Avx512 | Level::Avx512Vnni => false,
            #[cfg(all(feature = "std", target_arch = "aarch64", target_feature = "neon"))]
            Level::Neon | Level::Dotprod | Level::I8mm => aarch64::cpu_has(self),
            #[cfg(not(all(feature = "std", target_arch = "aarch64", target_feature = "neon")))]
            Level::Neon | Level::Dotprod | Level::I8mm => false,
        }
    }

    /// The best level this CPU runs (avx512-vnni before avx512 before avx2 on x86-64,
    /// i8mm before dotprod before neon on aarch64).
    pub fn detect() -> Level {
        [Level::Avx512Vnni, Level::Avx512, Level::Avx2, Level::I8mm, Level::Dotprod, Level::Neon]
            .into_iter()
            .find(|l| l.is_available())
            .unwrap_or(Level::Scalar)
    }

    /// The instructions the level needs, for error messages.
    pub fn requires(self) -> &'static str {
        match self {
            Level::Scalar => "nothing",
            Level::Avx2 => "x86-64 AVX2, FMA and F16C",
            Level::Avx512 => "x86-64 AVX2, FMA, F16C and AVX-512 F/BW/DQ/VL",
            Level::Avx512Vnni => "x86-64 AVX2, FMA, F16C, AVX-512 F/BW/DQ/VL and AVX512-VNNI",
            Level::Neon => "aarch64 NEON",
            Level::Dotprod => "aarch64 NEON and dotprod (SDOT)",
            Level::I8mm => "aarch64 NEON and i8mm (SMMLA)",
        }
    }

    /// Every level, reference first.
    pub const ALL: [Level; 7] =
        [Level::Scalar, Level::Avx2, Level::Avx512, Level::Avx512Vnni, Level::Neon, Level::Dotprod, Level::I8mm];

    /// Whether exact-mode ([`Q8Math::Exact`]) q8 linears at this level split activations
    /// into int8 digits for exact integer dot products (`dotprod`, `i8mm`). Their results then differ from the scalar
    /// reference by at most `Σ_k |w_k| · max_k |x_k| / (127 · 2¹⁷)` per output (weights
    /// dequantized), plus the usual f32 rounding, instead of the rounding alone.
    pub fn splits_q8_activations(self) -> bool {
        matches!(self, Level::Dotprod | Level::I8mm)
    }

    /// Whether [`Q8Math::Int8`] sends q4 weights to this level's [`Kernels::int8`]: the
    /// scalar reference and the x86-64 levels (which have q4 int8 kernels); the aarch64
    /// levels keep q4 on the exact path.
    pub fn has_q4_int8(self) -> bool {
        matches!(self, Level::Scalar | Level::Avx2 | Level::Avx512 | Level::Avx512Vnni)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One implementation of every kernel family.
pub struct Kernels {
    /// The level these kernels belong to.
    pub level: Level,
    /// Linear layers.
    pub linear: &'static dyn LinearKernel,
    /// Embedding bags.
    pub bag: &'static dyn EmbeddingBagKernel,
    /// Element-wise ops.
    pub elementwise: &'static dyn ElementwiseKernel,
    /// Dot products.
    pub dot: &'static dyn DotKernel,
    /// Layer norm.
    pub norm: &'static dyn NormKernel,
    /// Softmax.
    pub softmax: &'static dyn SoftmaxKernel,
    /// Reductions.
    pub reduce: &'static dyn ReduceKernel,
    /// Value × value matrix products.
    pub matmul: &'static dyn MatMulKernel,
    /// Unary math.
    pub unary: &'static dyn UnaryKernel,
    /// q8 and q4 linears with activations quantized to int8 per row ([`Q8Math::Int8`]), or
    /// `None` where the level has no integer dot products (those run the exact path).
    /// Every such kernel matches the scalar level's bit for bit. Pick it with
    /// [`Kernels::linear_for`]; handed any other weight, it computes the exact reference
    /// (handed a q4 weight, the int8 arithmetic of `int8.rs` at every level).
    pub int8: Option<&'static dyn LinearKernel>,
}

impl Kernels {
    /// The linear kernel that runs `w` under `math`: [`Kernels::int8`] for q8 and q4
    /// weights with [`INT8_MIN_K`]`..=`[`INT8_MAX_K`] columns when `math` is
    /// [`Q8Math::Int8`] and the level has one (for q4: [`Level::has_q4_int8`]), else
    /// [`Kernels::linear`]. Depends only on the weight, never on the batch.
    pub fn linear_for(&self, w: &WeightMatrix<'_>, math: Q8Math) -> &'static dyn LinearKernel {
        match (math, w.data, self.int8) {
            (Q8Math::Int8, WeightData::Q8 { .. }, Some(k)) if (INT8_MIN_K..=INT8_MAX_K).contains(&w.cols) => k,
            (Q8Math::Int8, WeightData::Q4(_), Some(k))
                if self.level.has_q4_int8() && (INT8_MIN_K..=INT8_MAX_K).contains(&w.cols) =>
            {
                k
            }
            _ => self.linear,
        }
    }
}

/// How q8 and q4 linears multiply: the session option that chooses between speed and
/// the exact dequantize-to-f32 result. (The name predates q4: it covers both formats.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Q8Math {
    /// Activations quantized per row to symmetric int8 on the fly and multiplied with the
    /// int8 codes in exact integer dot products (AVX2, AVX-512, VNNI, SDOT/SMMLA), as
    /// ONNX Runtime's dynamic quantization and llama.cpp do. Adds at most
    /// `w_scale · (x_scale / 2) · Σ|w_codes|` per output (`x_scale = max|x| / 127`); for q4,
    /// `(x_scale / 2) · Σ_b |d_b| · Σ|c − 8|` over the blocks `b` (`d_b` the block scale);
    /// identical at every level that has it. Levels without integer dot products
    /// (`neon`) run [`Q8Math::Exact`], and so do q4 weights at the aarch64 levels (their
    /// int8 kernels cover q8 only).
    #[default]
    Int8,
    /// Weights dequantized to f32 and multiplied with f32 activations: only the f32
    /// rounding of the level's float kernel.
    Exact,
}

impl Q8Math {
    /// The name used by the CLI and the C API.
    pub fn as_str(self) -> &'static str {
        match self {
            Q8Math::Int8 => "int8",
            Q8Math::Exact => "exact",
        }
    }

    /// Parses `int8` or `exact`.
    pub fn parse(s: &str) -> Option<Q8Math> {
        match s {
            "int8" => Some(Q8Math::Int8),
            "exact" => Some(Q8Math::Exact),
            _ => None,
        }
    }
}

/// A table's linears under one [`Q8Math`], as a single [`LinearKernel`]: each call goes
/// to [`Kernels::linear_for`]'s choice, and the scratch it reports covers both kernels
/// (so a plan sized with it fits whichever one a step calls).
#[derive(Clone, Copy, Debug)]
pub struct LinearDispatch {
    /// The table.
    pub kernels: &'static Kernels,
    /// The q8 math.
    pub math: Q8Math,
}

impl LinearKernel for LinearDispatch {
    fn scratch_len(&self, w: &WeightMatrix<'_>, rows: usize) -> usize {
        let chosen = self.kernels.linear_for(w, self.math);
        self.kernels.linear.scratch_len(w, rows).max(chosen.scratch_len(w, rows))
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
        self.kernels.linear_for(w, self.math).linear(x, w, bias, act, y, scratch);
    }

    fn linear_accumulate(&self, x: MatRef<'_>, w: &WeightMatrix<'_>, alpha: f32, y: MatMut<'_>, scratch: &mut [f32]) {
        self.kernels.linear_for(w, self.math).linear_accumulate(x, w, alpha, y, scratch);
    }
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels").field("level", &self.level).finish_non_exhaustive()
    }
}

/// The scalar reference table.
pub static SCALAR: Kernels = Kernels {
    level: Level::Scalar,
    linear: &scalar::Scalar,
    bag: &scalar::Scalar,
    elementwise: &scalar::Scalar,
    dot: &scalar::Scalar,
    norm: &scalar::Scalar,
    softmax: &scalar::Scalar,
    reduce: &scalar::Scalar,
    matmul: &scalar::Scalar,
    unary: &scalar::Scalar,
    int8: Some(&int8::Reference),
};

/// The kernel table for `level`, if this CPU supports it.
pub fn select(level: Level) -> Result<&'static Kernels> {
    if !level.is_available() {
        return Err(Error::KernelUnavailable {
            level: level.as_str().into(),
            detail: alloc::format!(
                "needs {}, which this CPU or build does not provide (auto would pick `{}`)",
                level.requires(),
                Level::detect()
            ),
        });
    }
    match level {
        Level::Scalar => Ok(&SCALAR),
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Level::Avx2 | Level::Avx512 | Level::Avx512Vnni => Ok(x86_64::table(level)),
        #[cfg(all(feature = "std", target_arch = "aarch64", target_feature = "neon"))]
        Level::Neon | Level::Dotprod | Level::I8mm => aarch64::table(level).ok_or_else(|| Error::KernelUnavailable {
            level: level.as_str().into(),
            detail: "not an aarch64 level".into(),
        }),
        #[allow(unreachable_patterns)]
        _ => Err(Error::KernelUnavailable { level: level.as_str().into(), detail: "not built".into() }),
    }
}

/// The environment variable that forces a kernel level.
pub const KERNELS_ENV: &str = "GRAFT_KERNELS";

/// The table named by `GRAFT_KERNELS`, or the best the CPU supports if it is unset.
pub fn from_env() -> Result<&'static Kernels> {
    #[cfg(feature = "std")]
    if let Ok(value) = std::env::var(KERNELS_ENV) {
        let value = value.trim();
        if !value.is_empty() && value != "auto" {
            let level = Level::parse(value).ok_or_else(|| Error::KernelUnavailable {
                level: value.into(),
                detail: alloc::format!(
                    "{KERNELS_ENV} must be one of auto, scalar, avx2, avx512, avx512-vnni, neon, dotprod, i8mm"
                ),
            })?;
            return select(level);
        }
    }
    select(Level::detect())
}

/// Every table this CPU can run, reference first (for tests and benchmarks).
pub fn available() -> alloc::vec::Vec<&'static Kernels> {
    Level::ALL.into_iter().filter_map(|l| select(l).ok()).collect()
}

/// Scalar activation functions, shared by every level for the ops it does not vectorize.
pub mod activation {
    use crate::graph::Activation;

    /// Applies `act` to one value.
    #[inline]
    pub fn apply(act: Activation, x: f32) -> f32 {
        match act {
            Activation::Relu => relu(x),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2/pi)
                0.5 * x * (1.0 + libm::tanhf(C * (x + 0.044_715 * x * x * x)))
            }
            Activation::Silu => x / (1.0 + libm::expf(-x)),
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => libm::tanhf(x),
        }
    }

    /// max(x, 0) that keeps NaN.
    #[inline(always)]
    pub fn relu(x: f32) -> f32 {
        if x < 0.0 { 0.0 } else { x }
    }

    /// The logistic function.
    #[inline]
    pub fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + libm::expf(-x))
    }
}

#[cfg(all(test, feature = "std"))]
mod int8_tests;
#[cfg(all(test, feature = "std"))]
mod tests;
