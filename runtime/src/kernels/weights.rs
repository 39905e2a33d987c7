//! Typed, borrowed views of weight matrices in every storage format.
//!
//! The kernels never see containers or tensor names, only a [`WeightMatrix`]: a
//! `[rows, cols]` matrix in the PyTorch `[out, in]` layout whose rows can be sliced
//! (for threading) and dequantized one at a time (for the reference kernels and for
//! packing panels).

use core::ops::Range;

use crate::format::WeightFormat;
use crate::quant::{self, Q4_BLOCK_BYTES};

/// The bytes of a weight, by format.
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    /// `rows · cols` f32.
    F32(&'a [f32]),
    /// `rows · cols` f16 bit patterns.
    F16(&'a [u16]),
    /// `rows · cols` bf16 bit patterns.
    Bf16(&'a [u16]),
    /// int8 codes and one f32 scale per row.
    Q8 {
        /// `rows · cols` codes.
        codes: &'a [i8],
        /// `rows` scales.
        scales: &'a [f32],
    },
    /// `rows · (cols + 8)` bytes: codes, f32 scale, f32 bias per row.
    Q8Rowwise(&'a [u8]),
    /// `rows · ceil(cols/32) · 18` bytes of Q4_0 blocks.
    Q4(&'a [u8]),
}

/// A weight matrix `[rows, cols]`, row-major (`[out, in]` for a linear).
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    /// Storage.
    pub data: WeightData<'a>,
    /// Rows.
    pub rows: usize,
    /// Logical columns (a q4 row may be padded beyond this).
    pub cols: usize,
}

impl<'a> WeightMatrix<'a> {
    /// An f32 matrix over a slice of `rows · cols` values.
    pub fn f32(data: &'a [f32], rows: usize, cols: usize) -> WeightMatrix<'a> {
        assert_eq!(data.len(), rows * cols, "f32 weight length");
        WeightMatrix { data: WeightData::F32(data), rows, cols }
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            WeightData::F32(_) => WeightFormat::F32,
            WeightData::F16(_) => WeightFormat::F16,
            WeightData::Bf16(_) => WeightFormat::Bf16,
            WeightData::Q8 { .. } => WeightFormat::Q8,
            WeightData::Q8Rowwise(_) => WeightFormat::Q8Rowwise,
            WeightData::Q4(_) => WeightFormat::Q4,
        }
    }

    /// Bytes of one stored row in the main buffer.
    pub fn row_bytes(&self) -> usize {
        self.format().row_bytes(self.cols)
    }

    /// Total bytes read when every weight is used once (main buffer plus scales).
    pub fn stored_bytes(&self) -> usize {
        let scales = if let WeightData::Q8 { .. } = self.data { self.rows * 4 } else { 0 };
        self.rows * self.row_bytes() + scales
    }

    /// The sub-matrix of rows `r`.
    pub fn rows_range(&self, r: Range<usize>) -> WeightMatrix<'a> {
        assert!(r.start <= r.end && r.end <= self.rows, "weight rows {r:?} of {}", self.rows);
        let c = self.cols;
        let data = match self.data {
            WeightData::F32(d) => WeightData::F32(&d[r.start * c..r.end * c]),
            WeightData::F16(d) => WeightData::F16(&d[r.start * c..r.end * c]),
            WeightData::Bf16(d) => WeightData::Bf16(&d[r.start * c..r.end * c]),
            WeightData::Q8 { codes, scales } => {
                WeightData::Q8 { codes: &codes[r.start * c..r.end * c], scales: &scales[r.clone()] }
            }
            WeightData::Q8Rowwise(d) => WeightData::Q8Rowwise(&d[r.start * (c + 8)..r.end * (c + 8)]),
            WeightData::Q4(d) => {
                let rb = c.div_ceil(quant::Q4_BLOCK) * Q4_BLOCK_BYTES;
                WeightData::Q4(&d[r.start * rb..r.end * rb])
            }
        };
        WeightMatrix { data, rows: r.end - r.start, cols: c }
    }

    /// Dequantizes row `r` into `out[..cols]`, exactly as every kernel does.
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        let out = &mut out[..self.cols];
        self.for_each_in_row(r, |c, v| out[c] = v);
    }

    /// Adds row `r` (dequantized) to `acc[..cols]`, element by element in order.
    pub fn accumulate_row(&self, r: usize, acc: &mut [f32]) {
        let acc = &mut acc[..self.cols];
        self.for_each_in_row(r, |c, v| acc[c] += v);
    }

    /// Calls `f(column, value)` for each dequantized value of row `r`, in column order.
    #[inline(always)]
    fn for_each_in_row(&self, r: usize, mut f: impl FnMut(usize, f32)) {
        let c = self.cols;
        match self.data {
            WeightData::F32(d) => d[r * c..(r + 1) * c].iter().enumerate().for_each(|(i, &v)| f(i, v)),
            WeightData::F16(d) => {
                d[r * c..(r + 1) * c].iter().enumerate().for_each(|(i, &b)| f(i, quant::f16_to_f32(b)));
            }
            WeightData::Bf16(d) => {
                d[r * c..(r + 1) * c].iter().enumerate().for_each(|(i, &b)| f(i, quant::bf16_to_f32(b)));
            }
            WeightData::Q8 { codes, scales } => {
                let s = scales[r];
                codes[r * c..(r + 1) * c].iter().enumerate().for_each(|(i, &q)| f(i, quant::q8_dequant(q, s)));
            }
            WeightData::Q8Rowwise(d) => {
                let (codes, scale, bias) = quant::q8_rowwise_parts(&d[r * (c + 8)..(r + 1) * (c + 8)]);
                codes.iter().enumerate().for_each(|(i, &q)| f(i, quant::q8_rowwise_dequant(q, scale, bias)));
            }
            WeightData::Q4(d) => {
                let rb = c.div_ceil(quant::Q4_BLOCK) * Q4_BLOCK_BYTES;
                let row = &d[r * rb..(r + 1) * rb];
                for (b, block) in row.chunks_exact(Q4_BLOCK_BYTES).enumerate() {
                    let scale = quant::q4_scale(block);
                    let start = b * quant::Q4_BLOCK;
                    for j in 0..quant::Q4_BLOCK.min(c.saturating_sub(start)) {
                        f(start + j, quant::q4_dequant(quant::q4_code(block, j), scale));
                    }
                }
            }
        }
    }
}
