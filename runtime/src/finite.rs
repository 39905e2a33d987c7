//! The non-finite parameter scan: a model whose float parameters hold NaN or ±Inf is
//! refused at open, naming the tensor and element.
//!
//! A NaN bias or an Inf q8 scale makes every row that touches it NaN, and a NaN score
//! silently ranks an item first or last; catching it once at open is cheaper and clearer
//! than finding it in the outputs. Only float tensors are read: q8/q4 weight codes are
//! integers and cannot be non-finite, so for a quantized model the scan covers its scales
//! and biases (about 1/cols of the file) and open stays independent of the weights' size;
//! an f32 model is read once in full, at memory bandwidth (README "Reliability" has the
//! figure per GB). The test is branch-free on the exponent bits and vectorizes; only a
//! tensor that fails it is searched for the first offending element.
//!
//! Graph constants are the exception: an attention mask's `-inf` or a clip's `+inf`
//! bound is a legitimate constant (imported transformers use them), so constants may be
//! infinite but never NaN. A file changed on disk after open is the file-mapping
//! contract's concern; the per-run output check ([`crate::Outputs::row_faults`]) catches
//! whatever reaches an output.

use alloc::format;
use alloc::vec;

use crate::container::Envelope;
use crate::error::{Error, Result};
use crate::format::{DType, WeightFormat};
use crate::graph::Graph;
use crate::quant::Q4_BLOCK_BYTES;

/// Refuses the first float tensor of `envelope` (inside `bytes`) holding NaN or ±Inf
/// (NaN only, for a constant of `g`), and the first q4 weight with a non-finite block
/// scale.
pub(crate) fn check_parameters(bytes: &[u8], envelope: &Envelope, g: &Graph) -> Result<()> {
    let mut constant = vec![false; envelope.tensors.len()];
    for c in &g.constants {
        if let Some(flag) = constant.get_mut(c.tensor) {
            *flag = true;
        }
    }
    for (k, t) in envelope.tensors.iter().enumerate() {
        let Some(data) = bytes.get(t.range()) else { continue };
        let found = first_non_finite(t.dtype, data).filter(|&(_, what)| !constant[k] || what == "NaN");
        if let Some((index, what)) = found {
            return Err(Error::NonFiniteParameter {
                tensor: t.name.clone(),
                detail: format!("element {index} is {what}; the model's parameters must be finite"),
            });
        }
    }
    // q4 weights are u8 blocks of an f16 scale and 16 bytes of codes.
    for w in g.weights.iter().filter(|w| w.format == WeightFormat::Q4) {
        let Some(t) = envelope.tensors.get(w.data) else { continue };
        let Some(data) = bytes.get(t.range()) else { continue };
        let bad = data.chunks_exact(Q4_BLOCK_BYTES).position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00);
        if let Some(block) = bad {
            return Err(Error::NonFiniteParameter {
                tensor: t.name.clone(),
                detail: format!(
                    "the f16 scale of q4 block {block} is not finite; the model's parameters must be finite"
                ),
            });
        }
    }
    Ok(())
}

/// The first non-finite element of `data` read as `dtype`, as (index, "NaN"/"+Inf"/"-Inf");
/// `None` for integer dtypes.
pub(crate) fn first_non_finite(dtype: DType, data: &[u8]) -> Option<(usize, &'static str)> {
    match dtype {
        DType::F32 => scan::<4>(data, 0x7f80_0000, 0x007f_ffff, 31),
        DType::F64 => scan::<8>(data, 0x7ff0_0000_0000_0000, 0x000f_ffff_ffff_ffff, 63),
        DType::F16 => scan::<2>(data, 0x7c00, 0x03ff, 15),
        DType::BF16 => scan::<2>(data, 0x7f80, 0x007f, 15),
        DType::F8E5M2 => scan::<1>(data, 0x7c, 0x03, 7),
        // E4M3 (the "fn" variant safetensors uses) has no infinities; NaN is S.1111.111.
        DType::F8E4M3 => data.iter().position(|b| b & 0x7f == 0x7f).map(|i| (i, "NaN")),
        _ => None,
    }
}

/// Scans little-endian `N`-byte floats whose exponent field is `exp` and mantissa `man`.
fn scan<const N: usize>(data: &[u8], exp: u64, man: u64, sign_bit: u32) -> Option<(usize, &'static str)> {
    let word = |c: &[u8]| {
        let mut b = [0u8; 8];
        b[..N].copy_from_slice(c);
        u64::from_le_bytes(b)
    };
    // Screen blocks without branches (vectorizes); search only a block that fails.
    const BLOCK: usize = 4096;
    for (k, block) in data.chunks(BLOCK * N).enumerate() {
        let bad = block.chunks_exact(N).fold(false, |acc, c| acc | (word(c) & exp == exp));
        if !bad {
            continue;
        }
        let (i, bits) = block.chunks_exact(N).map(word).enumerate().find(|(_, w)| w & exp == exp)?;
        let what = if bits & man != 0 {
            "NaN"
        } else if bits >> sign_bit & 1 == 1 {
            "-Inf"
        } else {
            "+Inf"
        };
        return Some((k * BLOCK + i, what));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> alloc::vec::Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn finds_the_first_non_finite_element_of_every_float_dtype() {
        let mut v = alloc::vec![1.0f32; 10_000];
        assert_eq!(first_non_finite(DType::F32, &f32s(&v)), None);
        v[9_000] = f32::NEG_INFINITY;
        v[9_500] = f32::NAN;
        assert_eq!(first_non_finite(DType::F32, &f32s(&v)), Some((9_000, "-Inf")));
        // Largest finite values and subnormals are finite.
        assert_eq!(first_non_finite(DType::F32, &f32s(&[f32::MAX, f32::MIN, 1e-45])), None);
        let f64s: alloc::vec::Vec<u8> = [1.0f64, f64::INFINITY].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(first_non_finite(DType::F64, &f64s), Some((1, "+Inf")));
        // f16: 0x3c00 = 1.0, 0x7bff = 65504 (max), 0x7e00 = NaN; bf16: 0x7f80 = +Inf.
        assert_eq!(first_non_finite(DType::F16, &[0x00, 0x3c, 0xff, 0x7b]), None);
        assert_eq!(first_non_finite(DType::F16, &[0x00, 0x3c, 0x00, 0x7e]), Some((1, "NaN")));
        assert_eq!(first_non_finite(DType::BF16, &[0x80, 0x3f, 0x80, 0xff]), Some((1, "-Inf")));
        assert_eq!(first_non_finite(DType::F8E4M3, &[0x7e, 0xff]), Some((1, "NaN")));
        // Integer codes are never non-finite.
        assert_eq!(first_non_finite(DType::I8, &[0xff; 64]), None);
    }
}
