//! f16 → f32 widening with `fcvtl`/`fcvtl2` (base ARMv8; exact for every f16 value,
//! subnormals, infinities and NaN included). Inline `asm!` because the `float16x4_t`
//! intrinsics are unstable on Rust 1.95.

use core::arch::aarch64::*;
use core::arch::asm;

/// Widens 8 f16 bit patterns to two f32x4 (low half, high half).
#[inline(always)]
pub(crate) fn widen8(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let lo: float32x4_t;
    let hi: float32x4_t;
    // SAFETY: register-only conversions of the base ISA; `out` registers never alias the
    // input, so `fcvtl2` still reads `h` after `fcvtl` wrote `lo`.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    (lo, hi)
}

/// Widens 4 f16 bit patterns.
#[inline(always)]
pub(crate) fn widen4(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: register-only conversion of the base ISA.
    unsafe {
        asm!("fcvtl {o:v}.4s, {h:v}.4h", h = in(vreg) h, o = out(vreg) out, options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// One f16 bit pattern as f32.
#[inline(always)]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    // SAFETY: register-only NEON (baseline on this target).
    unsafe { vgetq_lane_f32::<0>(widen4(vdup_n_u16(bits))) }
}

/// One bf16 bit pattern as f32 (exact: the high half of an f32).
#[inline(always)]
pub(crate) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The f32 scale of a Q4_0 block.
#[inline(always)]
pub(crate) fn q4_scale(block: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[0], block[1]]))
}

/// The signed value (code − 8) of element `j` of a Q4_0 block.
#[inline(always)]
pub(crate) fn q4_value(block: &[u8], j: usize) -> i32 {
    let byte = block[2 + j % 16];
    let code = if j < 16 { byte & 0x0f } else { byte >> 4 };
    code as i32 - 8
}
