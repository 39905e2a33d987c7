//! The adapter's parameter storage. f32 / f16 / bf16 tensors are used in place in the
//! file's bytes; a tensor whose bytes are not aligned for its element type (possible when
//! a writer does not pad the header) is copied into an owned, aligned vector.
//!
//! Files that change after load (README, "Files under a live model"): a file of at most
//! [`COPY_LIMIT`] bytes — every recommender LoRA and most LLM ones — is read into memory
//! once and verified (the same inode, size and mtime before and after the read, and every
//! byte read), so the adapter never sees the file again: a later truncation, rewrite or NaN
//! written into it changes nothing until the adapter is loaded again. A larger file stays
//! memory-mapped (page-table entries, not a copy) under the SIGBUS guard
//! (`graft_plugin_abi::mapguard`); every hook call then checks the guard's flag and the
//! file's `fstat`, and a truncation or in-place rewrite fails the call (and so the run)
//! with an `IO` error instead of faulting or mixing versions.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use graft_plugin_abi::{ElemFormat, ErrorCode, PluginError, WeightView};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

/// Files up to this size are copied into memory at load; larger ones are mapped.
pub const COPY_LIMIT: u64 = 16 << 20;

/// The bytes of a safetensors file: a copy, a guarded read-only mapping, or a buffer
/// handed to us.
#[derive(Debug)]
pub enum Backing {
    /// A read-only memory map of a file larger than [`COPY_LIMIT`].
    Mapped(Mapped),
    /// An owned buffer (a file read at load, or `load_bytes`).
    Owned(Vec<u8>),
}

/// A mapped adapter file and what is needed to notice it changing.
#[derive(Debug)]
pub struct Mapped {
    /// Unregisters before `map` is unmapped (fields drop in declaration order).
    guard: Option<graft_plugin_abi::mapguard::Guard>,
    map: Mmap,
    file: File,
    stamp: Stamp,
    path: String,
}

/// Size, inode and modification time: what changes when a file's contents do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: (u64, u64),
    modified: Option<std::time::SystemTime>,
}

impl Stamp {
    fn of(file: &File) -> std::io::Result<Stamp> {
        let meta = file.metadata()?;
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let inode = (0, 0);
        Ok(Stamp { len: meta.len(), inode, modified: meta.modified().ok() })
    }
}

impl Backing {
    /// Opens `path`: copies (and verifies) a file of at most [`COPY_LIMIT`] bytes, maps a
    /// larger one read-only under the SIGBUS guard (module docs).
    pub fn open(path: &Path, field: &str) -> Result<Backing, PluginError> {
        let io = |what: &str, e: std::io::Error| {
            PluginError::new(ErrorCode::IO, field, format!("cannot {what} {}: {e}", path.display()))
        };
        let mut file = File::open(path).map_err(|e| io("open", e))?;
        let stamp = Stamp::of(&file).map_err(|e| io("stat", e))?;
        if stamp.len <= COPY_LIMIT {
            let mut bytes = Vec::new();
            bytes
                .try_reserve_exact(stamp.len as usize)
                .map_err(|e| io("allocate memory for", std::io::Error::other(e)))?;
            // One byte more than the size: a file that grew during the read shows.
            (&mut file).take(stamp.len + 1).read_to_end(&mut bytes).map_err(|e| io("read", e))?;
            let after = Stamp::of(&file).map_err(|e| io("stat", e))?;
            if after != stamp || bytes.len() as u64 != stamp.len {
                return Err(PluginError::new(
                    ErrorCode::IO,
                    field,
                    format!(
                        "{} changed while it was being read ({} bytes at open, {} read, {} now); load it again                          once it is complete (publish adapter files by rename)",
                        path.display(),
                        stamp.len,
                        bytes.len(),
                        after.len
                    ),
                ));
            }
            return Ok(Backing::Owned(bytes));
        }
        // SAFETY: the mapping is read-only. Another process may truncate or rewrite the
        // file while it is mapped: the bytes are plain data (every bit pattern is a valid
        // f32/u16), a read past a new end of file is caught by the SIGBUS guard registered
        // below, and `check` fails every hook call after a change (module docs).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io("map", e))?;
        let guard = graft_plugin_abi::mapguard::register(map.as_ptr(), map.len());
        Ok(Backing::Mapped(Mapped { guard, map, file, stamp, path: path.display().to_string() }))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => &m.map,
            Backing::Owned(v) => v,
        }
    }

    /// Whether tensors living in these bytes count as mapped (not allocated).
    pub fn is_mapped(&self) -> bool {
        matches!(self, Backing::Mapped(_))
    }

    /// `Ok` unless a mapped file was truncated (the guard's flag) or rewritten (its
    /// `fstat`) since load; a copied or handed-over buffer never changes. Called after
    /// every hook that read the bytes, so a call that may have seen a change fails.
    pub fn check(&self, field: &str) -> Result<(), PluginError> {
        let Backing::Mapped(m) = self else { return Ok(()) };
        let changed = |what: String| {
            PluginError::new(
                ErrorCode::IO,
                field,
                format!("{}: {what} since the adapter was loaded; load it again to use the new file", m.path),
            )
        };
        if m.guard.as_ref().is_some_and(graft_plugin_abi::mapguard::Guard::faulted) {
            return Err(changed("the file was truncated (a read past its new end returned zeros)".into()));
        }
        match Stamp::of(&m.file) {
            Ok(now) if now == m.stamp => Ok(()),
            Ok(now) if now.len != m.stamp.len => {
                Err(changed(format!("the file changed size from {} to {} bytes", m.stamp.len, now.len)))
            }
            Ok(_) => Err(changed("the file was modified in place".into())),
            Err(e) => Err(changed(format!("the file cannot be examined ({e})"))),
        }
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
