//! The `.graft` envelope: a safetensors file with the graph in its metadata.
//!
//! Layout (all of it standard safetensors, so any safetensors reader lists the tensors):
//!
//! ```text
//! u64 LE header_len | header JSON (space-padded) | tensor data
//! header = { "__metadata__": { "graft.graph": "<graph JSON>", ... },
//!            "<tensor>": { "dtype": "F32", "shape": [..], "data_offsets": [b, e] }, ... }
//! ```
//!
//! graft adds two rules on top: the data section starts at a multiple of 64 bytes and every
//! tensor except `__pad.N` fillers starts at a 64-byte file offset, so a page-aligned
//! mapping gives cache-line-aligned tensors with no copy. Parsing here works on a borrowed
//! `&[u8]` and never touches tensor bytes: its cost depends on the header, not the model.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::DType;

/// Alignment of every tensor's file offset.
pub const TENSOR_ALIGN: usize = 64;
/// Upper bound on the JSON header (the safetensors crate uses the same limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// Metadata key holding the graph JSON.
pub const GRAPH_KEY: &str = "graft.graph";
/// Prefix of the filler tensors that keep data aligned.
pub const PAD_PREFIX: &str = "__pad.";

/// One tensor of the container: where its bytes are and what they hold.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TensorInfo {
    /// Name in the header.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Absolute byte offset in the container.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The byte range in the container.
    pub fn range(&self) -> core::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// The parsed envelope: tensor table plus metadata, all offsets checked.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Tensors in data order, filler tensors excluded.
    pub tensors: Vec<TensorInfo>,
    /// Tensor name → index into `tensors`.
    pub by_name: BTreeMap<String, usize>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section.
    pub data_start: usize,
}

impl Envelope {
    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }
}

/// Parses and validates the safetensors envelope of `bytes`.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope> {
    let available = bytes.len() as u64;
    let len_bytes: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or(Error::Truncated {
        what: "header length",
        needed: 8,
        available,
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge { declared: header_len, limit: MAX_HEADER_LEN });
    }
    let data_start = 8 + header_len;
    if data_start > available {
        return Err(Error::Truncated { what: "header", needed: data_start, available });
    }
    let data_start = data_start as usize;
    let header = &bytes[8..data_start];
    let root: Map<String, Value> =
        serde_json::from_slice(header).map_err(|e| Error::HeaderJson { detail: format!("not a JSON object: {e}") })?;

    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(root.len());
    for (name, value) in root {
        if name == "__metadata__" {
            let Value::Object(map) = value else {
                return Err(Error::HeaderJson { detail: "`__metadata__` is not an object".into() });
            };
            for (k, v) in map {
                let Value::String(s) = v else {
                    return Err(Error::HeaderJson { detail: format!("metadata value `{k}` is not a string") });
                };
                metadata.insert(k, s);
            }
        } else {
            let (dtype, shape, begin, end) = parse_tensor_entry(&name, &value)?;
            entries.push((name, dtype, shape, begin, end));
        }
    }

    // Offsets must tile the data section exactly, in order (safetensors' own rule).
    let data_len = (bytes.len() - data_start) as u64;
    entries.sort_by_key(|e| (e.3, e.4));
    let mut cursor = 0u64;
    let mut previous: Option<&str> = None;
    for (name, _, _, begin, end) in &entries {
        if *end > data_len {
            return Err(Error::TensorOutOfRange { tensor: name.clone(), begin: *begin, end: *end, data_len });
        }
        if *begin < cursor {
            return Err(Error::TensorOverlap { first: previous.unwrap_or_default().to_string(), second: name.clone() });
        }
        if *begin > cursor {
            return Err(Error::TensorGap { offset: cursor });
        }
        cursor = *end;
        previous = Some(name);
    }
    if cursor != data_len {
        return Err(Error::TensorGap { offset: cursor });
    }

    let mut tensors = Vec::with_capacity(entries.len());
    let mut by_name = BTreeMap::new();
    for (name, dtype, shape, begin, end) in entries {
        if name.starts_with(PAD_PREFIX) {
            continue;
        }
        let offset = data_start + begin as usize;
        if !offset.is_multiple_of(TENSOR_ALIGN) {
            return Err(Error::Misaligned { tensor: name, offset: offset as u64, align: TENSOR_ALIGN as u64 });
        }
        by_name.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo { name, dtype, shape, offset, len: (end - begin) as usize });
    }
    Ok(Envelope { tensors, by_name, metadata, data_start })
}

type Entry = (DType, Vec<usize>, u64, u64);

fn parse_tensor_entry(name: &str, value: &Value) -> Result<Entry> {
    let bad = |detail: String| Error::TensorEntry { tensor: name.to_string(), detail };
    let Value::Object(obj) = value else {
        return Err(bad("entry is not an object".into()));
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "dtype" | "shape" | "data_offsets") {
            return Err(bad(format!("unknown field `{key}`")));
        }
    }
    let dtype_str =
        obj.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("missing string field `dtype`".into()))?;
    let dtype = DType::parse(dtype_str)
        .ok_or_else(|| Error::UnknownDtype { tensor: name.to_string(), dtype: dtype_str.to_string() })?;
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing array field `shape`".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("shape entries must be non-negative integers".into()))?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing array field `data_offsets`".into()))?;
    let [begin, end] = offsets.as_slice() else {
        return Err(bad("`data_offsets` must have two entries".into()));
    };
    let (Some(begin), Some(end)) = (begin.as_u64(), end.as_u64()) else {
        return Err(bad("`data_offsets` must be non-negative integers".into()));
    };
    if end < begin {
        return Err(bad(format!("data_offsets [{begin}, {end}] end before they begin")));
    }
    let bytes = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if bytes != end - begin {
        return Err(bad(format!(
            "shape {shape:?} of {dtype} needs {bytes} bytes but data_offsets span {}",
            end - begin
        )));
    }
    Ok((dtype, shape, begin, end))
}
