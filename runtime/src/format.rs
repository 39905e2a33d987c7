//! Element types of the container and the weight formats built from them.
//!
//! A `.graft` file is a safetensors file, so its tensors carry safetensors dtypes
//! ([`DType`]). A *weight* (a linear matrix or an embedding table) is stored in one
//! [`WeightFormat`], which may span several tensors (q8 keeps codes and per-row scales
//! apart) or pack blocks into a byte tensor (q4). The graph JSON says which format each
//! weight uses; validation checks the tensors agree.

use core::fmt;

/// The safetensors element types, as spelled in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DType {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl DType {
    /// Parses a safetensors dtype string.
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "BOOL" => DType::Bool,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "F8_E5M2" => DType::F8E5M2,
            "F8_E4M3" => DType::F8E4M3,
            "I16" => DType::I16,
            "U16" => DType::U16,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I32" => DType::I32,
            "U32" => DType::U32,
            "F32" => DType::F32,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "U64" => DType::U64,
            _ => return None,
        })
    }

    /// The safetensors spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E5M2 | DType::F8E4M3 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a weight matrix `[rows, cols]` is stored.
///
/// | format | tensors | per row |
/// |---|---|---|
/// | `f32` | `W: F32 [rows, cols]` | |
/// | `f16` | `W: F16 [rows, cols]` | |
/// | `bf16` | `W: BF16 [rows, cols]` | |
/// | `q8` | `W: I8 [rows, cols]`, `W.scale: F32 [rows]` | symmetric, `w = q·scale` |
/// | `q8_rowwise` | `W: U8 [rows, cols + 8]` | `cols` codes, then f32 scale, f32 bias (FBGEMM 8-bit rowwise) |
/// | `q4` | `W: U8 [rows, ceil(cols/32)·18]` | ggml Q4_0 blocks; the last block is zero-padded |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WeightFormat {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// int8, symmetric, one f32 scale per row (linear weights).
    Q8,
    /// uint8, asymmetric, f32 scale and bias stored at the end of each row (embedding tables).
    Q8Rowwise,
    /// ggml Q4_0: blocks of 32 values, one f16 scale, 18 bytes per block.
    Q4,
}

impl WeightFormat {
    /// Every format, in a stable order.
    pub const ALL: [WeightFormat; 6] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Q8,
        WeightFormat::Q8Rowwise,
        WeightFormat::Q4,
    ];

    /// The name used in the graph JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8 => "q8",
            WeightFormat::Q8Rowwise => "q8_rowwise",
            WeightFormat::Q4 => "q4",
        }
    }

    /// Parses a format name.
    pub fn parse(s: &str) -> Option<WeightFormat> {
        WeightFormat::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Bytes one row of `cols` weights occupies in the main tensor.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            WeightFormat::F32 => cols * 4,
            WeightFormat::F16 | WeightFormat::Bf16 => cols * 2,
            WeightFormat::Q8 => cols,
            WeightFormat::Q8Rowwise => cols + 8,
            WeightFormat::Q4 => cols.div_ceil(crate::quant::Q4_BLOCK) * crate::quant::Q4_BLOCK_BYTES,
        }
    }

    /// The dtype and per-row element count of the main tensor.
    pub fn main_tensor(self, cols: usize) -> (DType, usize) {
        match self {
            WeightFormat::F32 => (DType::F32, cols),
            WeightFormat::F16 => (DType::F16, cols),
            WeightFormat::Bf16 => (DType::BF16, cols),
            WeightFormat::Q8 => (DType::I8, cols),
            WeightFormat::Q8Rowwise | WeightFormat::Q4 => (DType::U8, self.row_bytes(cols)),
        }
    }

    /// Whether rows carry a separate `.scale` tensor.
    pub fn has_scale_tensor(self) -> bool {
        self == WeightFormat::Q8
    }

    /// Whether the format is lossy with respect to f32.
    pub fn is_quantized(self) -> bool {
        matches!(self, WeightFormat::Q8 | WeightFormat::Q8Rowwise | WeightFormat::Q4)
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
