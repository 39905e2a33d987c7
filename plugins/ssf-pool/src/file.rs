//! The adapter file: one safetensors file of F32 tensors whose `__metadata__` carries the
//! config under [`CONFIG_KEY`]. Reading and writing live together so that the two sides
//! of the format cannot drift apart.
//!
//! These files are small (a FedIns pool for ViT-B/16 with 25 entries is about 80 MB,
//! typical ones a few KB), so they are read whole and every tensor is copied into an owned
//! `Vec<f32>`: the hooks then index plain slices with no alignment or endianness caveats.
//! The `safetensors` crate parses the header with overflow-checked offsets, so a hostile
//! header fails with a `TENSOR` error instead of reading out of bounds.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use graft_plugin_abi::{ErrorCode, PluginError};
use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensors};

use crate::config::Config;

/// The `__metadata__` key holding the JSON config.
pub const CONFIG_KEY: &str = "graft.adapter";

/// Length of the little-endian header-size prefix of a safetensors file.
const SIZE_PREFIX: usize = 8;

fn tensor_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::TENSOR, field, message)
}

/// A checked F32 tensor, copied out of the file.
#[derive(Debug, Clone)]
pub(crate) struct F32Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A parsed adapter file borrowing its bytes.
#[derive(Debug)]
pub(crate) struct AdapterFile<'a> {
    /// The bytes after the header.
    data: &'a [u8],
    meta: Metadata,
    /// The path (or `<memory:id>`) for error messages.
    pub source: &'a str,
}

impl<'a> AdapterFile<'a> {
    /// Parses the header of `bytes`.
    pub fn parse(bytes: &'a [u8], source: &'a str) -> Result<AdapterFile<'a>, PluginError> {
        let (header_len, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| tensor_err(source, format!("not a valid safetensors file: {e}")))?;
        let data = SIZE_PREFIX
            .checked_add(header_len)
            .and_then(|start| bytes.get(start..))
            .ok_or_else(|| tensor_err(source, "header length lies outside the file"))?;
        Ok(AdapterFile { data, meta, source })
    }

    /// The config text from the metadata, if any.
    pub fn config_text(&self) -> Option<&str> {
        self.meta.metadata().as_ref()?.get(CONFIG_KEY).map(String::as_str)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> BTreeSet<String> {
        self.meta.tensors().into_keys().collect()
    }

    /// The shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.meta.info(name).map(|i| i.shape.as_slice())
    }

    /// Tensor `name` (which `field` of the config named) as checked F32 values: present,
    /// dtype F32, every value finite.
    pub fn tensor(&self, name: &str, field: &str) -> Result<F32Tensor, PluginError> {
        let Some(info) = self.meta.info(name) else {
            return Err(tensor_err(name, format!("named by `{field}` but not in {}", self.source)));
        };
        if info.dtype != Dtype::F32 {
            return Err(tensor_err(name, format!("dtype {:?} is not supported (expected F32)", info.dtype)));
        }
        let (begin, end) = info.data_offsets;
        // read_metadata checked that the offsets are contiguous, sized for the shape and
        // inside the buffer; `get` keeps this panic-free even so.
        let raw = self
            .data
            .get(begin..end)
            .ok_or_else(|| tensor_err(name, format!("data offsets {begin}..{end} lie outside the file")))?;
        let values: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(PluginError::new(
                ErrorCode::NOT_FINITE,
                name,
                format!("value at flat index {i} is {}", values[i]),
            ));
        }
        Ok(F32Tensor { shape: info.shape.clone(), values })
    }
}

/// Writes an `ssf-pool` adapter file: every tensor as F32 under its name, and `config` as
/// JSON under the [`CONFIG_KEY`] metadata entry. `tensors` holds `(name, shape, values)`.
///
/// The config is checked structurally first ([`Config::validate`]), each tensor's length
/// must match its shape, and every tensor the config names must be given. The file is
/// written to a temporary sibling, flushed to disk, then renamed over `path`, so a reader
/// never sees a torn file.
pub fn save(
    path: impl AsRef<Path>,
    config: &Config,
    tensors: &[(&str, Vec<usize>, &[f32])],
) -> Result<(), PluginError> {
    let path = path.as_ref();
    let field = path.display().to_string();
    config.validate()?;
    let given: BTreeSet<&str> = tensors.iter().map(|t| t.0).collect();
    if given.len() != tensors.len() {
        return Err(tensor_err(&field, "a tensor name is given twice"));
    }
    if let Some(missing) = config.tensor_names().into_iter().find(|n| !given.contains(n)) {
        return Err(tensor_err(missing, "named by the config but not given"));
    }
    let bytes: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n != Some(values.len()) {
                return Err(tensor_err(name, format!("shape {shape:?} does not hold {} values", values.len())));
            }
            Ok((*name, shape.as_slice(), values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        })
        .collect::<Result<_, _>>()?;
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.to_vec(), data)
                .map(|v| (*name, v))
                .map_err(|e| tensor_err(name, format!("cannot describe tensor: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([(CONFIG_KEY.to_owned(), config.to_json())]);
    let out = safetensors::serialize(views, Some(metadata))
        .map_err(|e| tensor_err(&field, format!("cannot serialize: {e}")))?;
    write_atomically(path, &out).map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot write: {e}")))
}

/// Writes `bytes` to a unique temporary file next to `path`, syncs it, and renames it
/// into place (`graft_plugin_abi::files`: regular files only, temporary file removed on
/// every error path).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    graft_plugin_abi::files::write_atomic(path, |file| file.write_all(bytes))
}
