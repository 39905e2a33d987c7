//! The routing file on disk: one safetensors file of F32 tensors whose metadata holds the
//! configuration. Reading turns it into a checked configuration plus owned tensors;
//! writing ([`save`]) produces exactly what reading accepts.
//!
//! Files are small (a few towers), so they are read whole and every tensor is copied into
//! an owned `Vec<f32>`: that makes the loader independent of the file's alignment and of
//! the file changing afterwards, and the loader transforms the towers anyway.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use graft_plugin_abi::{ErrorCode, PluginError};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Config, LoadOptions, METADATA_KEY};

/// A file's tensors by name, each with its shape and values.
pub(crate) type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn tensor_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::TENSOR, field, message)
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path)
        .map_err(|e| PluginError::new(ErrorCode::IO, path.display().to_string(), format!("cannot read: {e}")))
}

/// Parses safetensors bytes into the configuration (the options' one wins over the file's)
/// and every tensor as owned f32 values. `file` names the source in errors.
pub(crate) fn parse(bytes: &[u8], options: LoadOptions, file: &str) -> Result<(Config, Tensors), PluginError> {
    // The crate checks the header length, JSON, offsets, overlaps and sizes with
    // overflow-checked arithmetic, so a hostile header fails here.
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| tensor_err(file, format!("not a valid safetensors file: {e}")))?;
    let config = match options.config {
        Some(c) => c,
        None => {
            let (_, meta) = SafeTensors::read_metadata(bytes)
                .map_err(|e| tensor_err(file, format!("not a valid safetensors file: {e}")))?;
            let text = meta.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)).ok_or_else(|| {
                PluginError::new(
                    ErrorCode::CONFIG,
                    METADATA_KEY,
                    format!("{file} has no `{METADATA_KEY}` metadata and the load options give no `config`"),
                )
            })?;
            Config::parse(text)?
        }
    };
    let mut tensors = Tensors::new();
    for (name, view) in st.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(tensor_err(name, format!("dtype {:?} is not supported (expected F32)", view.dtype())));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        tensors.insert(name.to_owned(), (view.shape().to_vec(), values));
    }
    Ok((config, tensors))
}

/// Writes a routing file: `config` as the `graft.adapter` metadata and `tensors` as F32
/// (`(name, shape, values)`, values row-major). It does not check the tensors against the
/// configuration (tests write broken files with it); loading does.
pub fn save(
    path: impl AsRef<Path>,
    config: &Config,
    tensors: &[(&str, Vec<usize>, &[f32])],
) -> Result<(), PluginError> {
    save_with_metadata(path.as_ref(), Some(&config.to_json()), tensors)
}

/// [`save`] with raw metadata text (`None`: no `graft.adapter` entry), for files written by
/// other tools and hostile-input tests.
pub fn save_with_metadata(
    path: &Path,
    metadata: Option<&str>,
    tensors: &[(&str, Vec<usize>, &[f32])],
) -> Result<(), PluginError> {
    let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    for (name, shape, values) in tensors {
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(values.len()) {
            return Err(tensor_err(name, format!("shape {shape:?} does not hold {} values", values.len())));
        }
        bytes.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), data) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), data).map_err(|e| tensor_err(name, e.to_string()))?;
        views.push((*name, view));
    }
    let meta = metadata.map(|m| HashMap::from([(METADATA_KEY.to_owned(), m.to_owned())]));
    let field = path.display().to_string();
    let out = safetensors::serialize(views, meta).map_err(|e| tensor_err(&field, e.to_string()))?;
    std::fs::write(path, out).map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot write: {e}")))
}
