//! x86-64 fast paths (AVX2 + FMA + F16C), selected at runtime.

use super::Kernels;

/// Whether the CPU has every feature the AVX2 table uses.
pub(crate) fn cpu_has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
}

/// The AVX2 table (placeholder until the kernels land: the scalar table).
pub(crate) fn table() -> &'static Kernels {
    &super::SCALAR
}
