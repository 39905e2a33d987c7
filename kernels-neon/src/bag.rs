//! Embedding-bag gather-accumulate: `acc += dequant(row)`, 8 columns per step.
//!
//! Algorithm: the caller zeroes the output, then for each id of the bag in order calls
//! the `add_*` function of the table's format with that row (the row of the next id can be
//! [`prefetch`]ed meanwhile, which hides part of the miss latency of random rows in tables
//! far larger than cache), and for `mean` finishes with [`divide`]. Each element sees the
//! same IEEE operations in the same order as graft's scalar reference — dequantize
//! (`code · scale`, then `+ bias` for q8-rowwise; `(code − 8) · d` for Q4_0; exact
//! widening for f16/bf16), then one add — with no fused multiply-add, so results are
//! bit-identical to it. The `cols mod 8` tail runs the same operations in scalar code.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::half::{bf16_to_f32, f16_to_f32, q4_scale, q4_value, widen8};
use crate::{Q4_BLOCK, Q4_BLOCK_BYTES};

/// Adds 8 values at a time from `load(c)` (`c` a multiple of 8) and `tail(c)` after.
#[inline(always)]
fn accumulate(acc: &mut [f32], load: impl Fn(usize) -> [float32x4_t; 2], tail: impl Fn(usize) -> f32) {
    let n = acc.len();
    let n8 = n - n % 8;
    let p = acc.as_mut_ptr();
    let mut c = 0;
    while c < n8 {
        let [a, b] = load(c);
        // SAFETY: c + 8 ≤ n8 ≤ acc.len().
        unsafe {
            vst1q_f32(p.add(c), vaddq_f32(vld1q_f32(p.add(c)), a));
            vst1q_f32(p.add(c + 4), vaddq_f32(vld1q_f32(p.add(c + 4)), b));
        }
        c += 8;
    }
    for (c, v) in acc.iter_mut().enumerate().skip(n8) {
        *v += tail(c);
    }
}

/// `acc += row` (f32 rows; `row.len() ≥ acc.len()`).
pub fn add_f32(row: &[f32], acc: &mut [f32]) {
    let row = &row[..acc.len()];
    accumulate(
        acc,
        |c| {
            // SAFETY: c + 8 ≤ acc.len() = row.len().
            unsafe { [vld1q_f32(row.as_ptr().add(c)), vld1q_f32(row.as_ptr().add(c + 4))] }
        },
        |c| row[c],
    );
}

/// `acc += f32(row)` for f16 bit patterns.
pub fn add_f16(row: &[u16], acc: &mut [f32]) {
    let row = &row[..acc.len()];
    accumulate(
        acc,
        |c| {
            // SAFETY: c + 8 ≤ row.len().
            let (lo, hi) = widen8(unsafe { vld1q_u16(row.as_ptr().add(c)) });
            [lo, hi]
        },
        |c| f16_to_f32(row[c]),
    );
}

/// `acc += f32(row)` for bf16 bit patterns.
pub fn add_bf16(row: &[u16], acc: &mut [f32]) {
    let row = &row[..acc.len()];
    accumulate(
        acc,
        |c| {
            // SAFETY: c + 8 ≤ row.len(); the widening is a shift.
            unsafe {
                let h = vld1q_u16(row.as_ptr().add(c));
                [
                    vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                    vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
                ]
            }
        },
        |c| bf16_to_f32(row[c]),
    );
}

/// `acc += f32(code) · scale` for a q8 row.
pub fn add_q8(codes: &[i8], scale: f32, acc: &mut [f32]) {
    let codes = &codes[..acc.len()];
    // SAFETY: register-only splat.
    let s = unsafe { vdupq_n_f32(scale) };
    accumulate(
        acc,
        |c| {
            // SAFETY: c + 8 ≤ codes.len().
            unsafe {
                let q = vmovl_s8(vld1_s8(codes.as_ptr().add(c)));
                [
                    vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(q))), s),
                    vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(q)), s),
                ]
            }
        },
        |c| codes[c] as f32 * scale,
    );
}

/// `acc += f32(code) · scale + bias` for a q8-rowwise row (multiply, then add).
pub fn add_q8_rowwise(codes: &[u8], scale: f32, bias: f32, acc: &mut [f32]) {
    let codes = &codes[..acc.len()];
    // SAFETY: register-only splats.
    let (s, b) = unsafe { (vdupq_n_f32(scale), vdupq_n_f32(bias)) };
    accumulate(
        acc,
        |c| {
            // SAFETY: c + 8 ≤ codes.len(); separate mul and add, no fusion.
            unsafe {
                let q = vmovl_u8(vld1_u8(codes.as_ptr().add(c)));
                [
                    vaddq_f32(vmulq_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(q))), s), b),
                    vaddq_f32(vmulq_f32(vcvtq_f32_u32(vmovl_high_u16(q)), s), b),
                ]
            }
        },
        |c| codes[c] as f32 * scale + bias,
    );
}

/// `acc += (code − 8) · d` for a Q4_0 row of `ceil(acc.len()/32)` blocks.
pub fn add_q4(blocks: &[u8], acc: &mut [f32]) {
    let blocks = &blocks[..acc.len().div_ceil(Q4_BLOCK) * Q4_BLOCK_BYTES];
    accumulate(
        acc,
        |c| {
            let block = &blocks[(c / Q4_BLOCK) * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            let j = c % Q4_BLOCK;
            // SAFETY: bytes 2 + j%16 .. +8 lie inside the block's 16 nibble bytes.
            unsafe {
                let d = vdupq_n_f32(q4_scale(block));
                let bytes = vld1_u8(block.as_ptr().add(2 + j % 16));
                let nib = if j < 16 { vand_u8(bytes, vdup_n_u8(0x0f)) } else { vshr_n_u8::<4>(bytes) };
                let v = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(nib)), vdupq_n_s16(8));
                [
                    vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(v))), d),
                    vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(v)), d),
                ]
            }
        },
        |c| {
            let block = &blocks[(c / Q4_BLOCK) * Q4_BLOCK_BYTES..][..Q4_BLOCK_BYTES];
            q4_value(block, c % Q4_BLOCK) as f32 * q4_scale(block)
        },
    );
}

/// `acc /= n` (the `mean` mode), an IEEE division per element like the reference.
pub fn divide(acc: &mut [f32], n: f32) {
    let len = acc.len();
    let n4 = len - len % 4;
    let p = acc.as_mut_ptr();
    let mut c = 0;
    while c < n4 {
        // SAFETY: c + 4 ≤ len.
        unsafe { vst1q_f32(p.add(c), vdivq_f32(vld1q_f32(p.add(c)), vdupq_n_f32(n))) };
        c += 4;
    }
    for v in &mut acc[n4..] {
        *v /= n;
    }
}

/// Hints that the bytes at `p` (and the next 3 cache lines) will be read soon.
pub fn prefetch(p: *const u8) {
    for line in 0..4 {
        // SAFETY: `prfm` is a hint that never faults, whatever the address.
        unsafe {
            asm!("prfm pldl1keep, [{p}]", p = in(reg) p.wrapping_add(64 * line), options(nostack, readonly, preserves_flags))
        };
    }
}
