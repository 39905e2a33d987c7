//! aarch64 NEON kernels for graft, `no_std` and free of graft types.
//!
//! The crate is the arm64 counterpart of graft's AVX2 table: plain slice-based functions
//! that `graft` (the runtime) wraps into its kernel traits after it has detected the CPU
//! features. It depends on nothing of ours (the runtime depends on it), allocates nothing
//! and has no `std`, so the same code serves Linux boards (Jetson, Graviton, Pi 5) and
//! bare-metal builds.
//!
//! Families:
//! - [`linear`]: `y = x · Wᵀ` with a fused epilogue (row scale, bias, ReLU, or
//!   `y += alpha ·` for adapter steps) for f32, f16, bf16, q8 and Q4_0 weights; f32 FMA
//!   arithmetic, weights widened in registers. [`linear::dot`] is the same reduction for
//!   two vectors.
//! - [`q8`]: q8 weights × activations split into three int8 digits, reduced exactly in
//!   integers with a baseline NEON path (`smull`/`sadalp`), an SDOT path (`dotprod`) and
//!   an SMMLA path (`i8mm`). All three give bit-identical results; the accuracy contract
//!   (a bound relative to the row's largest activation) is in the module docs.
//! - [`int8`]: q8 weights × activations already rounded to int8 (graft's int8 q8 path):
//!   exact i32 sums with one SDOT or SMMLA per weight vector, handed to the caller's
//!   epilogue.
//! - [`bag`]: embedding-bag gather-accumulate of f32/f16/bf16/q8/q8-rowwise/Q4_0 rows,
//!   bit-identical to the scalar dequantize-then-add reference.
//! - [`lora`]: the shrink and expand steps of low-rank adapters for a group of rows that
//!   share an adapter.
//! - [`act`]: ReLU, sigmoid, SiLU, add, mul, layer norm.
//! - [`exp`]: full-range vectorized `e^x` (the AVX2 `exp8` class, ≤ 2 ulp) and a scalar
//!   `ln`; [`softmax`]: softmax and log-softmax over a lane; [`reduce`]: sum, max, min;
//!   [`matmul`]: value × value `[m, k] · [k, n]` products, 4-wide FMA over `n`.
//!
//! Half precision: f16 weights are *widened* with `fcvtl` (exact, base ARMv8) and reduced
//! in f32. FP16 arithmetic (`fmla .8h`, the `fp16` extension) would round every partial
//! sum to 11 bits, far outside the runtime's f32-reference tolerance, so it is not used.
//!
//! Levels and safety: everything in [`linear`], [`bag`], [`lora`], [`act`], [`exp`],
//! [`softmax`], [`reduce`] and [`matmul`] needs only NEON, which every aarch64 Linux
//! target enables, so those functions are safe (bounds are checked once per call; the
//! loads inside are unchecked). [`q8::gemm_split`] and [`int8::gemm_i8`] are
//! `unsafe fn` because its `level` argument selects code compiled with
//! `#[target_feature(enable = "dotprod")]` / `"i8mm"`: the caller must have checked the CPU
//! (graft uses `is_aarch64_feature_detected!`). SDOT/SMMLA are emitted with inline `asm!`
//! because their intrinsics are unstable on Rust 1.95.
//!
//! On other targets the kernels compile to nothing; only the portable helpers
//! ([`Epilogue`], [`split`]) remain, so the workspace builds everywhere, including
//! `thumbv7em-none-eabihf`.

#![no_std]

#[cfg(test)]
extern crate std;

pub mod split;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod act;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod bag;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod exp;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod half;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod int8;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod linear;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod lora;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod matmul;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod q8;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod reduce;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod softmax;

#[cfg(all(test, target_arch = "aarch64", target_feature = "neon"))]
mod tensor_tests;
#[cfg(all(test, target_arch = "aarch64", target_feature = "neon"))]
mod tests;

/// A row-major f32 matrix borrowed from a slice: element `(r, c)` is
/// `data[r · stride + c]`.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Mat<'a> {
    /// The elements (at least `(rows − 1) · stride + cols` of them).
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between row starts, `≥ cols`.
    pub stride: usize,
}

impl<'a> Mat<'a> {
    /// A dense `rows × cols` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat { data, rows, cols, stride: cols }
    }

    /// Row `r`.
    #[inline(always)]
    pub fn row(&self, r: usize) -> &'a [f32] {
        &self.data[r * self.stride..r * self.stride + self.cols]
    }

    /// Panics unless every row lies inside `data` (checked once per kernel call, so
    /// the kernels' unchecked loads are in bounds).
    pub fn check(&self) {
        assert!(self.cols <= self.stride || self.rows <= 1, "cols {} > stride {}", self.cols, self.stride);
        let need = if self.rows == 0 { 0 } else { (self.rows - 1) * self.stride + self.cols };
        assert!(self.data.len() >= need, "matrix needs {need} elements, has {}", self.data.len());
    }
}

/// A mutable row-major f32 matrix borrowed from a slice (see [`Mat`]).
#[derive(Debug)]
pub struct MatMut<'a> {
    /// The elements (at least `(rows − 1) · stride + cols` of them).
    pub data: &'a mut [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between row starts, `≥ cols`.
    pub stride: usize,
}

impl<'a> MatMut<'a> {
    /// A dense `rows × cols` matrix.
    pub fn dense(data: &'a mut [f32], rows: usize, cols: usize) -> MatMut<'a> {
        MatMut { data, rows, cols, stride: cols }
    }

    /// Row `r`.
    #[inline(always)]
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.stride..r * self.stride + self.cols]
    }

    /// Panics unless every row lies inside `data`.
    pub fn check(&self) {
        Mat { data: self.data, rows: self.rows, cols: self.cols, stride: self.stride }.check();
    }
}

/// What happens to a finished dot product of weight row `o` before it lands in
/// `y[m, o]`: `v = dot · scales[o] + bias[o]`, then ReLU, then either a store or (for
/// adapter steps) `y += accumulate · v`.
///
/// The same operations in the same order as graft's scalar reference (a multiply, an
/// add, a compare), so the epilogue adds no rounding difference of its own.
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Epilogue<'a> {
    /// Per-output-row scale (q8 weights: the dot product is over the raw codes).
    pub scales: Option<&'a [f32]>,
    /// Per-output-row bias.
    pub bias: Option<&'a [f32]>,
    /// Apply `max(v, 0)` (NaN passes through).
    pub relu: bool,
    /// `y += alpha · v` instead of `y = v`.
    pub accumulate: Option<f32>,
}

impl Epilogue<'_> {
    /// Finishes output `o` with dot product `dot` into `dst`.
    #[inline(always)]
    pub fn finish(&self, o: usize, dot: f32, dst: &mut f32) {
        let scaled = match self.scales {
            Some(s) => dot * s[o],
            None => dot,
        };
        let v = scaled + self.bias.map_or(0.0, |b| b[o]);
        let v = if self.relu && v < 0.0 { 0.0 } else { v };
        *dst = match self.accumulate {
            Some(alpha) => *dst + alpha * v,
            None => v,
        };
    }

    /// Panics unless scales and bias cover `n` outputs.
    pub fn check(&self, n: usize) {
        assert!(self.scales.is_none_or(|s| s.len() >= n), "epilogue scales shorter than {n}");
        assert!(self.bias.is_none_or(|b| b.len() >= n), "epilogue bias shorter than {n}");
    }
}

/// Values per Q4_0 block.
pub const Q4_BLOCK: usize = 32;
/// Bytes per Q4_0 block: an f16 scale and 16 bytes of nibbles.
pub const Q4_BLOCK_BYTES: usize = 18;
