//! Quantization rules, bit-exact with the project's reference vectors.
//!
//! - **q8** (linear weights): per-row symmetric int8. `scale = f32(amax / 127)`,
//!   `q = clamp(round_half_away(f32(w / scale)), -127, 127)`, `w' = f32(q) · scale`; an
//!   all-zero row has scale 0 and codes 0.
//! - **q8_rowwise** (embedding tables, FBGEMM "8-bit rowwise"): per-row asymmetric uint8,
//!   `scale = (max - min) / 255`, `bias = min`, `q = clamp(round_half_even((w - min) ·
//!   (255 / (max - min))), 0, 255)`, `w' = f32(q) · scale + bias` (multiply, then add).
//!   The scale and bias are stored as little-endian f32 after the row's codes, so a gather
//!   touches one contiguous span per row.
//! - **q4** (ggml Q4_0): blocks of 32, `d = m / -8` where `m` is the signed value of the
//!   first element of largest magnitude, `code = min(15, trunc(f32(f32(x · (1/d)) + 8.5)))`,
//!   the scale stored as f16, `w' = (code - 8) · f32(f16(d))`. A row whose length is not a
//!   multiple of 32 is padded with zeros, which dequantize to exactly ±0.
//!
//! All arithmetic is f32 with explicit rounding so the codes do not depend on the
//! platform. Inputs must be finite (the converter checks before calling).

use half::{bf16, f16};

/// Values per q4 block.
pub const Q4_BLOCK: usize = 32;
/// Bytes per q4 block: an f16 scale and 16 bytes of nibbles.
pub const Q4_BLOCK_BYTES: usize = 18;
/// Trailing bytes per q8_rowwise row: f32 scale, f32 bias.
pub const Q8_ROWWISE_TRAILER: usize = 8;

// ---------------------------------------------------------------------------------------
// q8: symmetric int8, one f32 scale per row.

/// Quantizes one row into `codes` and returns its scale.
pub fn q8_quantize_row(row: &[f32], codes: &mut [i8]) -> f32 {
    debug_assert_eq!(row.len(), codes.len());
    let amax = row.iter().fold(0.0f32, |m, &w| if w.abs() > m { w.abs() } else { m });
    let scale = amax / 127.0;
    if scale == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    for (c, &w) in codes.iter_mut().zip(row) {
        // `as i8` saturates; the clamp documents the rule and never fires for this scale.
        *c = libm::roundf(w / scale).clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Dequantizes one q8 value.
#[inline(always)]
pub fn q8_dequant(code: i8, scale: f32) -> f32 {
    code as f32 * scale
}

// ---------------------------------------------------------------------------------------
// q8_rowwise: asymmetric uint8 with the scale and bias fused at the end of the row.

/// Quantizes one row into `out` (`row.len() + 8` bytes: codes, f32 scale, f32 bias).
pub fn q8_rowwise_quantize_row(row: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), row.len() + Q8_ROWWISE_TRAILER);
    let (min, max) = row.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &w| (lo.min(w), hi.max(w)));
    let (min, max) = if row.is_empty() { (0.0, 0.0) } else { (min, max) };
    let range = max - min;
    let scale = range / 255.0;
    let inv = if range > 0.0 { 255.0 / range } else { 0.0 };
    let (codes, trailer) = out.split_at_mut(row.len());
    for (c, &w) in codes.iter_mut().zip(row) {
        *c = libm::roundevenf((w - min) * inv).clamp(0.0, 255.0) as u8;
    }
    trailer[..4].copy_from_slice(&scale.to_le_bytes());
    trailer[4..].copy_from_slice(&min.to_le_bytes());
}

/// Splits a q8_rowwise row into its codes, scale and bias.
#[inline(always)]
pub fn q8_rowwise_parts(row: &[u8]) -> (&[u8], f32, f32) {
    let n = row.len() - Q8_ROWWISE_TRAILER;
    let (codes, t) = row.split_at(n);
    let scale = f32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let bias = f32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    (codes, scale, bias)
}

/// Dequantizes one q8_rowwise value.
#[inline(always)]
pub fn q8_rowwise_dequant(code: u8, scale: f32, bias: f32) -> f32 {
    code as f32 * scale + bias
}

// ---------------------------------------------------------------------------------------
// q4: ggml Q4_0.

/// Quantizes one block of 32 values into 18 bytes (ggml `quantize_row_q4_0_ref`).
pub fn q4_quantize_block(x: &[f32; Q4_BLOCK]) -> [u8; Q4_BLOCK_BYTES] {
    let mut amax = 0.0f32;
    let mut m = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            m = v;
        }
    }
    let d = m / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; Q4_BLOCK_BYTES];
    out[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    let code = |v: f32| -> u8 { libm::truncf(v * id + 8.5).min(15.0) as u8 };
    for j in 0..Q4_BLOCK / 2 {
        out[2 + j] = code(x[j]) | (code(x[j + Q4_BLOCK / 2]) << 4);
    }
    out
}

/// Quantizes a row of any length into `ceil(len/32)` blocks (zero-padded).
pub fn q4_quantize_row(row: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), row.len().div_ceil(Q4_BLOCK) * Q4_BLOCK_BYTES);
    for (chunk, dst) in row.chunks(Q4_BLOCK).zip(out.chunks_exact_mut(Q4_BLOCK_BYTES)) {
        let mut block = [0.0f32; Q4_BLOCK];
        block[..chunk.len()].copy_from_slice(chunk);
        dst.copy_from_slice(&q4_quantize_block(&block));
    }
}

/// The f32 scale of a q4 block.
#[inline(always)]
pub fn q4_scale(block: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32()
}

/// The code (0..=15) of element `j` (0..32) of a q4 block.
#[inline(always)]
pub fn q4_code(block: &[u8], j: usize) -> u8 {
    let byte = block[2 + (j % (Q4_BLOCK / 2))];
    if j < Q4_BLOCK / 2 { byte & 0x0f } else { byte >> 4 }
}

/// Dequantizes one q4 code with its block scale.
#[inline(always)]
pub fn q4_dequant(code: u8, d: f32) -> f32 {
    (code as i32 - 8) as f32 * d
}

/// Dequantizes the first `out.len()` values of a q4 row.
pub fn q4_dequant_row(row: &[u8], out: &mut [f32]) {
    for (b, chunk) in out.chunks_mut(Q4_BLOCK).enumerate() {
        let block = &row[b * Q4_BLOCK_BYTES..(b + 1) * Q4_BLOCK_BYTES];
        let d = q4_scale(block);
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = q4_dequant(q4_code(block, j), d);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Half-precision floats.

/// f32 → f16 bits, round to nearest even.
#[inline(always)]
pub fn f16_from_f32(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

/// f16 bits → f32 (exact).
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// f32 → bf16 bits, round to nearest even.
#[inline(always)]
pub fn bf16_from_f32(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_worked_example() {
        let mut c = [0i8; 3];
        let s = q8_quantize_row(&[3.0, 4.0, 2.0], &mut c);
        assert_eq!(c, [95, 127, 64]);
        assert_eq!(s, 4.0 / 127.0);
    }

    #[test]
    fn q8_rowwise_round_trip_is_within_half_step() {
        let row = [-1.0f32, -0.25, 0.0, 0.3, 2.0];
        let mut out = [0u8; 13];
        q8_rowwise_quantize_row(&row, &mut out);
        let (codes, scale, bias) = q8_rowwise_parts(&out);
        assert_eq!(bias, -1.0);
        assert_eq!(codes[0], 0);
        assert_eq!(codes[4], 255);
        for (&c, &w) in codes.iter().zip(&row) {
            assert!((q8_rowwise_dequant(c, scale, bias) - w).abs() <= scale * 0.5 + 1e-6);
        }
    }

    #[test]
    fn q8_rowwise_constant_row_is_exact() {
        let row = [0.75f32; 4];
        let mut out = [0u8; 12];
        q8_rowwise_quantize_row(&row, &mut out);
        let (codes, scale, bias) = q8_rowwise_parts(&out);
        assert!(codes.iter().all(|&c| q8_rowwise_dequant(c, scale, bias) == 0.75));
    }

    #[test]
    fn q4_padded_row_dequantizes_tail_to_zero() {
        let row: [f32; 40] = core::array::from_fn(|i| i as f32 - 20.0);
        let mut q = [0u8; 36];
        q4_quantize_row(&row, &mut q);
        let mut full = [1.0f32; 64];
        q4_dequant_row(&q, &mut full);
        assert!(full[40..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn bf16_round_trip() {
        assert_eq!(bf16_to_f32(bf16_from_f32(1.5)), 1.5);
        assert_eq!(f16_to_f32(f16_from_f32(-0.125)), -0.125);
    }
}
