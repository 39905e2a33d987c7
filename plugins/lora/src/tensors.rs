//! The adapter's parameter storage: the safetensors file stays memory-mapped and f32 /
//! f16 / bf16 tensors are used in place, so loading an adapter costs page-table entries,
//! not copies. A tensor whose bytes are not aligned for its element type inside the
//! mapping (possible when a writer does not pad the header) is copied into an owned,
//! aligned vector; that is the only copy the loader makes of a matrix.

use std::fs::File;
use std::path::Path;

use graft_plugin_abi::{ElemFormat, ErrorCode, PluginError, WeightView};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

/// The bytes of a safetensors file: a read-only mapping or a buffer handed to us.
#[derive(Debug)]
pub enum Backing {
    /// A read-only memory map of the file.
    Mapped(Mmap),
    /// An owned buffer (`load_bytes`).
    Owned(Vec<u8>),
}

impl Backing {
    /// Maps `path` read-only.
    pub fn map(path: &Path, field: &str) -> Result<Backing, PluginError> {
        let file = File::open(path)
            .map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the mapping is read-only and private to this adapter. Another process
        // truncating or rewriting the file while it is mapped would change the bytes under
        // us (or fault); that is the documented contract of adapter files (they are
        // immutable once published), the same one every mmap-based loader relies on.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot map {}: {e}", path.display())))?;
        Ok(Backing::Mapped(map))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }

    /// Whether tensors living in these bytes count as mapped (not allocated).
    pub fn is_mapped(&self) -> bool {
        matches!(self, Backing::Mapped(_))
    }
}

/// Where a tensor's elements live.
#[derive(Debug)]
enum Place {
    /// `len` elements at byte `offset` of the backing (the mapping or the handed-over buffer), aligned for the format.
    Mapped { offset: usize },
    /// Copied out because the in-place bytes were misaligned.
    OwnedF32(Vec<f32>),
    /// As above, f16/bf16 bit patterns.
    OwnedU16(Vec<u16>),
}

/// One tensor of the adapter file.
#[derive(Debug)]
pub struct Tensor {
    /// The safetensors key.
    pub key: String,
    /// Element format.
    pub format: ElemFormat,
    /// Shape as declared.
    pub shape: Vec<usize>,
    /// Number of elements.
    pub len: usize,
    place: Place,
}

/// Reinterprets bytes as f32 values if they are aligned.
fn cast_f32(bytes: &[u8]) -> Option<&[f32]> {
    // SAFETY: every bit pattern is a valid f32; `align_to` only yields the middle part at a
    // correctly aligned address, and we accept the result only when nothing is left over.
    let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// Reinterprets bytes as u16 values if they are aligned.
fn cast_u16(bytes: &[u8]) -> Option<&[u16]> {
    // SAFETY: every bit pattern is a valid u16; see `cast_f32`.
    let (head, mid, tail) = unsafe { bytes.align_to::<u16>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

impl Tensor {
    /// Bytes of parameters (in the stored format).
    pub fn bytes(&self) -> u64 {
        (self.len * self.format.size()) as u64
    }

    /// Whether the tensor was copied out of the backing.
    pub fn is_owned(&self) -> bool {
        !matches!(self.place, Place::Mapped { .. })
    }

    fn raw<'a>(&self, backing: &'a [u8]) -> Option<&'a [u8]> {
        match self.place {
            Place::Mapped { offset } => backing.get(offset..offset.checked_add(self.len * self.format.size())?),
            _ => None,
        }
    }

    /// The f32 values, if the format is f32.
    pub fn f32s<'a>(&'a self, backing: &'a [u8]) -> Option<&'a [f32]> {
        match &self.place {
            Place::OwnedF32(v) => Some(v),
            Place::OwnedU16(_) => None,
            Place::Mapped { .. } if self.format == ElemFormat::F32 => cast_f32(self.raw(backing)?),
            Place::Mapped { .. } => None,
        }
    }

    /// The bit patterns, if the format is f16 or bf16.
    pub fn u16s<'a>(&'a self, backing: &'a [u8]) -> Option<&'a [u16]> {
        match &self.place {
            Place::OwnedU16(v) => Some(v),
            Place::OwnedF32(_) => None,
            Place::Mapped { .. } if self.format != ElemFormat::F32 => cast_u16(self.raw(backing)?),
            Place::Mapped { .. } => None,
        }
    }

    /// The tensor as a `rows × cols` weight view for host kernels.
    pub fn weight_view<'a>(&'a self, backing: &'a [u8], rows: usize, cols: usize) -> Option<WeightView<'a>> {
        match self.format {
            ElemFormat::F32 => WeightView::f32(self.f32s(backing)?, rows, cols),
            f => WeightView::half(self.u16s(backing)?, f, rows, cols),
        }
    }

    /// Element `i` as f32.
    pub fn get(&self, backing: &[u8], i: usize) -> Option<f32> {
        match self.format {
            ElemFormat::F32 => self.f32s(backing)?.get(i).copied(),
            ElemFormat::F16 => self.u16s(backing)?.get(i).map(|&b| f16::from_bits(b).to_f32()),
            ElemFormat::Bf16 => self.u16s(backing)?.get(i).map(|&b| bf16::from_bits(b).to_f32()),
        }
    }

    /// All values as f32 (a copy; for small vectors and load-time work).
    pub fn to_f32_vec(&self, backing: &[u8]) -> Option<Vec<f32>> {
        (0..self.len).map(|i| self.get(backing, i)).collect()
    }

    /// The index of the first NaN or infinite value.
    pub fn first_non_finite(&self, backing: &[u8]) -> Option<usize> {
        match self.format {
            ElemFormat::F32 => self.f32s(backing)?.iter().position(|v| !v.is_finite()),
            ElemFormat::F16 => self.u16s(backing)?.iter().position(|&b| !f16::from_bits(b).is_finite()),
            ElemFormat::Bf16 => self.u16s(backing)?.iter().position(|&b| !bf16::from_bits(b).is_finite()),
        }
    }
}

/// The tensors of a safetensors buffer, plus its `format` metadata entry.
#[derive(Debug)]
pub struct TensorSet {
    /// In file-key order (sorted), for deterministic error reporting.
    pub tensors: Vec<Tensor>,
    /// `__metadata__["format"]`, if present.
    pub format_note: Option<String>,
}

fn tensor_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::TENSOR, field, message)
}

/// Parses the header (the safetensors crate checks lengths, offsets, overlaps and sizes
/// with overflow-checked arithmetic) and locates every tensor without copying it.
pub fn read_tensors(backing: &Backing, file: &str) -> Result<TensorSet, PluginError> {
    let bytes = backing.bytes();
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| tensor_err(file, format!("invalid safetensors: {e}")))?;
    let format_note = metadata.metadata().as_ref().and_then(|m| m.get("format").cloned());
    // read_metadata checked that the header and every tensor lie inside the buffer.
    let data_start = header_len.checked_add(8).ok_or_else(|| tensor_err(file, "header length overflows"))?;

    let mut tensors = Vec::new();
    let mut infos: Vec<_> = metadata.tensors().into_iter().collect();
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, info) in infos {
        let format = match info.dtype {
            Dtype::F32 => ElemFormat::F32,
            Dtype::F16 => ElemFormat::F16,
            Dtype::BF16 => ElemFormat::Bf16,
            other => {
                return Err(tensor_err(&key, format!("dtype {other:?} is not supported (expected F32, F16 or BF16)")));
            }
        };
        let (begin, end) = info.data_offsets;
        let range = data_start.checked_add(begin).zip(data_start.checked_add(end));
        let Some(data) = range.and_then(|(b, e)| bytes.get(b..e)) else {
            return Err(tensor_err(&key, format!("data offsets {begin}..{end} lie outside the file")));
        };
        let offset = data_start + begin;
        let len = data.len() / format.size();
        // In-place use also needs a little-endian host (the file is little-endian).
        let aligned = cfg!(target_endian = "little")
            && match format {
                ElemFormat::F32 => cast_f32(data).is_some(),
                _ => cast_u16(data).is_some(),
            };
        let place = if aligned {
            Place::Mapped { offset }
        } else {
            match format {
                ElemFormat::F32 => Place::OwnedF32(
                    data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                ),
                _ => Place::OwnedU16(data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
            }
        };
        tensors.push(Tensor { key, format, shape: info.shape.clone(), len, place });
    }
    Ok(TensorSet { tensors, format_note })
}
