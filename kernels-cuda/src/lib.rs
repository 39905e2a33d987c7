//! CUDA kernels for graft: the CUDA C sources, their NVRTC compilation with an on-disk
//! cache, and thin launch wrappers over the CUDA driver API (through `cudarc`).
//!
//! Why it looks like this:
//! - **No CUDA at build time.** The `.cu` files are embedded with `include_str!` and
//!   compiled by NVRTC the first time a process uses a module on a device, so the crate
//!   builds on any machine and the binary carries no fat cubins. The PTX is cached on
//!   disk ([`cache`]) keyed by source hash, target arch and NVRTC version, so later
//!   processes skip the compile.
//! - **No CUDA at run time either.** `cudarc` loads `libcuda` and `libnvrtc` dynamically.
//!   A missing library makes cudarc *panic* on first use, so every first touch goes
//!   through [`driver_available`] / [`nvrtc_available`] (cudarc's `is_culib_present`,
//!   plus `catch_unwind` as a second guard) and becomes [`CudaError::Unavailable`].
//! - **Depends on nothing of graft's** (DESIGN §1): wrappers take raw device pointers,
//!   strides and shapes; the runtime's executor owns the arena layout and the weights.
//!   The numbering of [`WeightFormat`] and [`Act`] is the contract with the kernels
//!   (`src/cu/common.cuh`).
//!
//! The kernels and what they compute are documented at the top of each `.cu` file:
//! `linear.cu` (GEMV / GEMM with in-kernel dequant for f32, f16, bf16, q8, q8_rowwise,
//! q4 and a fused bias + activation), `embedding.cu` (embedding bags), `lora.cu` (BGMV /
//! SGMV LoRA shrink and expand with a per-row adapter index, SSF scale-shift) and
//! `elementwise.cu` (activations, add/mul, copy, cross epilogue, layer norm, DLRM dot
//! interaction, FM) and `tensor.cu` (the per-row tensor ops of graph format v2: strided
//! copies, broadcast binary ops (f32, and i64 arithmetic / comparisons), select, unary ops, reductions, softmax, embedding lookup and gather
//! with a device error word, batched matmul; shapes arrive as [`Strided`] walks).

pub mod cache;
pub mod device;
pub mod nvrtc;
pub mod tensor;

/// The `cudarc` this crate launches through (streams, contexts), for callers.
pub use cudarc;
pub use device::{DeviceBuffer, Gpu, HostRegistration, LoraLaunch, PinnedBuffer};
pub use tensor::{Strided, TS_DIMS};

use std::fmt;

/// The common definitions prepended to every module (NVRTC gets no include path).
pub const COMMON_SOURCE: &str = include_str!("cu/common.cuh");

/// One compilation unit of kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// `linear.cu`: GEMV and GEMM for every weight format.
    Linear,
    /// `embedding.cu`: embedding bags for every table format.
    Embedding,
    /// `lora.cu`: BGMV / SGMV LoRA and SSF.
    Lora,
    /// `elementwise.cu`: activations, binary ops, copy, cross, layer norm, interactions.
    Elementwise,
    /// `tensor.cu`: per-row tensor ops (strided copy, broadcast binary, unary, reduce,
    /// softmax, embedding lookup, batched matmul).
    Tensor,
}

impl Module {
    /// Every module, in a fixed order.
    pub const ALL: [Module; 5] = [Module::Linear, Module::Embedding, Module::Lora, Module::Elementwise, Module::Tensor];

    /// The file name (also the NVRTC program name).
    pub fn file_name(self) -> &'static str {
        match self {
            Module::Linear => "linear.cu",
            Module::Embedding => "embedding.cu",
            Module::Lora => "lora.cu",
            Module::Elementwise => "elementwise.cu",
            Module::Tensor => "tensor.cu",
        }
    }

    /// The module's own source (without the common prelude).
    pub fn body(self) -> &'static str {
        match self {
            Module::Linear => include_str!("cu/linear.cu"),
            Module::Embedding => include_str!("cu/embedding.cu"),
            Module::Lora => include_str!("cu/lora.cu"),
            Module::Elementwise => include_str!("cu/elementwise.cu"),
            Module::Tensor => include_str!("cu/tensor.cu"),
        }
    }

    /// The full source NVRTC compiles: the common prelude, then the body.
    pub fn source(self) -> String {
        let mut s = String::with_capacity(COMMON_SOURCE.len() + self.body().len() + 64);
        s.push_str(COMMON_SOURCE);
        s.push_str("\n// ---- ");
        s.push_str(self.file_name());
        s.push_str(" ----\n");
        s.push_str(self.body());
        s
    }

    /// The `extern "C"` kernels the module defines.
    pub fn kernels(self) -> Vec<String> {
        let per_format = |prefix: &str| WeightFormat::ALL.iter().map(|f| format!("{prefix}_{}", f.name())).collect();
        match self {
            Module::Linear => {
                let mut v: Vec<String> = per_format("gemv");
                v.extend(per_format("gemm"));
                v
            }
            Module::Embedding => per_format("bag"),
            Module::Lora => ["bgmv_shrink", "bgmv_expand", "sgmv_shrink", "sgmv_expand", "ssf_f32"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Module::Elementwise => [
                "act_f32",
                "act_inplace_f32",
                "binary_f32",
                "copy_f32",
                "cross_f32",
                "layer_norm_f32",
                "dot_interaction_f32",
                "fm_f32",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            Module::Tensor => {
                let mut v: Vec<String> = TENSOR_KERNELS.iter().map(|s| s.to_string()).collect();
                v.extend(per_format("lookup"));
                v
            }
        }
    }
}

/// The format-independent kernels of `tensor.cu` (plus `lookup_<format>`).
pub const TENSOR_KERNELS: [&str; 11] = [
    "fill_u32",
    "strided_copy_u32",
    "binary_strided_f32",
    "binary_strided_i64",
    "where_u32",
    "unary_f32",
    "reduce_f32",
    "softmax_f32",
    "gather_u32",
    "sanitize_ids_i64",
    "matmul_f32",
];

/// Kernel name prefixes whose `ptxas -v` report must show no spills: the ones that carry
/// the bandwidth or the FLOPs of a run. CI fails if any of them spills on any arch.
pub const HOT_KERNEL_PREFIXES: [&str; 5] = ["gemv_", "gemm_", "bgmv_", "sgmv_", "bag_"];

/// Whether kernel `name` is in the hot set ([`HOT_KERNEL_PREFIXES`]).
pub fn is_hot(name: &str) -> bool {
    HOT_KERNEL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The virtual architectures CI compiles for: Jetson Orin (sm_87) and H100/H200 (sm_90).
pub const CI_ARCHES: [&str; 2] = ["compute_87", "compute_90"];

/// Weight storage formats, numbered as `FMT_*` in `common.cuh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum WeightFormat {
    /// f32.
    F32 = 0,
    /// IEEE half.
    F16 = 1,
    /// bfloat16.
    Bf16 = 2,
    /// int8 codes + one f32 scale per row (separate array).
    Q8 = 3,
    /// Per row: uint8 codes, f32 scale, f32 bias.
    Q8Rowwise = 4,
    /// ggml Q4_0 blocks of 32 (18 bytes).
    Q4 = 5,
}

impl WeightFormat {
    /// Every format.
    pub const ALL: [WeightFormat; 6] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Q8,
        WeightFormat::Q8Rowwise,
        WeightFormat::Q4,
    ];

    /// The suffix of the format's kernels (`gemv_q8`, `bag_q8_rowwise`, …).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8 => "q8",
            WeightFormat::Q8Rowwise => "q8_rowwise",
            WeightFormat::Q4 => "q4",
        }
    }
}

/// Activations, numbered as `ACT_*` in `common.cuh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Act {
    /// Identity.
    None = 0,
    /// max(x, 0), NaN kept.
    Relu = 1,
    /// Exact (erf) GELU.
    Gelu = 2,
    /// tanh-approximated GELU.
    GeluTanh = 3,
    /// x · sigmoid(x).
    Silu = 4,
    /// Logistic.
    Sigmoid = 5,
    /// tanh.
    Tanh = 6,
}

/// Binary element-wise operations of `binary_f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum BinOp {
    /// a + b.
    Add = 0,
    /// a · b.
    Mul = 1,
}

/// Binary ops of `binary_strided_f32`, numbered as `TB_*` in `tensor.cu` (the graph's
/// `BinaryOp` order). Comparisons and logic ops give 0.0 / 1.0 masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum TensorBinOp {
    /// a + b.
    Add = 0,
    /// a − b.
    Sub = 1,
    /// a · b.
    Mul = 2,
    /// a / b.
    Div = 3,
    /// a^b.
    Pow = 4,
    /// min (NaN propagates).
    Min = 5,
    /// max (NaN propagates).
    Max = 6,
    /// a == b.
    Equal = 7,
    /// a < b.
    Less = 8,
    /// a ≤ b.
    LessEqual = 9,
    /// a > b.
    Greater = 10,
    /// a ≥ b.
    GreaterEqual = 11,
    /// Logical and of masks.
    And = 12,
    /// Logical or.
    Or = 13,
    /// Logical xor.
    Xor = 14,
    /// a ≥ 0 ? a : a · b.
    Prelu = 15,
}

impl TensorBinOp {
    /// Whether `binary_strided_i64` implements the op: wrapping add/sub/mul, min, max and
    /// the comparisons (i64 division, whose zero divisor is an error, stays on the CPU).
    pub fn has_i64_kernel(self) -> bool {
        use TensorBinOp as B;
        matches!(
            self,
            B::Add
                | B::Sub
                | B::Mul
                | B::Min
                | B::Max
                | B::Equal
                | B::Less
                | B::LessEqual
                | B::Greater
                | B::GreaterEqual
        )
    }
}

/// Unary ops of `unary_f32`, numbered as `TU_*` in `tensor.cu` (the graph's `UnaryOp`
/// order); [`UnaryCode::Act`] applies an activation. Parameters travel separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryCode {
    /// A graph `UnaryOp` by its position in the enum (0 = neg … 20 = pow_const).
    Op(i32),
    /// An activation.
    Act(Act),
}

impl UnaryCode {
    /// The kernel's op number.
    pub fn code(self) -> i32 {
        match self {
            UnaryCode::Op(c) => c,
            UnaryCode::Act(a) => 32 + a as i32,
        }
    }
}

/// Reductions of `reduce_f32`, numbered as `TR_*` in `tensor.cu` (the graph's `ReduceOp`
/// order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ReduceCode {
    /// Σ.
    Sum = 0,
    /// Mean.
    Mean = 1,
    /// Max (NaN propagates).
    Max = 2,
    /// Min (NaN propagates).
    Min = 3,
    /// Π.
    Prod = 4,
    /// √Σx².
    L2 = 5,
    /// Σ|x|.
    L1 = 6,
    /// Σx².
    SumSquare = 7,
    /// Mean of x².
    MeanSquare = 8,
    /// ln Σ eˣ (max-shifted).
    LogSumExp = 9,
}

/// What can go wrong in this crate.
#[derive(Debug)]
pub enum CudaError {
    /// CUDA cannot be used here: a library is missing, there is no such device, …
    Unavailable(String),
    /// NVRTC rejected a module (the log says why).
    Compile {
        /// The module's file name.
        module: &'static str,
        /// The target architecture.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A driver call failed.
    Driver(String),
    /// A launch was asked for something the kernels do not support.
    Invalid(String),
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::Unavailable(why) => write!(f, "CUDA unavailable: {why}"),
            CudaError::Compile { module, arch, log } => write!(f, "NVRTC failed on {module} for {arch}:\n{log}"),
            CudaError::Driver(e) => write!(f, "CUDA driver error: {e}"),
            CudaError::Invalid(e) => write!(f, "invalid CUDA launch: {e}"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(format!("{e:?}"))
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, CudaError>;

/// Whether the CUDA driver library (`libcuda`) can be loaded. Never panics.
pub fn driver_available() -> bool {
    std::panic::catch_unwind(|| {
        // SAFETY: is_culib_present only tries to dlopen candidate names and drops them.
        unsafe { cudarc::driver::sys::is_culib_present() }
    })
    .unwrap_or(false)
}

/// Whether the NVRTC library (`libnvrtc`) can be loaded. Never panics.
pub fn nvrtc_available() -> bool {
    std::panic::catch_unwind(|| {
        // SAFETY: as in `driver_available`.
        unsafe { cudarc::nvrtc::sys::is_culib_present() }
    })
    .unwrap_or(false)
}

/// 64-bit FNV-1a: a stable hash for cache keys and the cache files' integrity check
/// (not cryptographic; the cache directory is trusted as much as the user's home).
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_lists_kernels_defined_in_its_source() {
        for m in Module::ALL {
            let src = m.source();
            for k in m.kernels() {
                let defined = src.contains(&format!(" {k}(")) || {
                    // Macro-instantiated: `gemv_##name` with the format suffix.
                    let (prefix, suffix) = k.split_once('_').unwrap_or((k.as_str(), ""));
                    src.contains(&format!("{prefix}_##name")) && src.contains(&format!("({suffix}, FMT_"))
                };
                assert!(defined, "{k} is not defined in {}", m.file_name());
            }
        }
    }

    #[test]
    fn hot_set_covers_the_bandwidth_kernels() {
        assert!(is_hot("gemv_q8") && is_hot("gemm_f32") && is_hot("bgmv_shrink") && is_hot("sgmv_expand"));
        assert!(is_hot("bag_q8_rowwise"));
        assert!(!is_hot("act_f32") && !is_hot("ssf_f32"));
    }

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
        assert_eq!(fnv1a64(&[b"x"]), fnv1a64(&[b"x"]));
    }
}
