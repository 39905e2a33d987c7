//! The adapter file: one safetensors file whose `graft.adapter` metadata is the config and
//! whose only (optional) tensor is the projection matrix the config names.
//!
//! Everything that can be checked without a model is checked here, so that
//! [`inspect_file`] reports exactly what loading would refuse, except the checks that need
//! the model (node names, the key width `d`).

use std::collections::HashMap;
use std::path::Path;

use abi_stable::std_types::{RString, RVec};
use graft_plugin_abi::{AdapterInfo, ErrorCode, PluginError, TargetInfo};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Config, Estimate, config_err};
use crate::state::write_atomic;

/// The metadata key holding the config JSON.
pub const CONFIG_METADATA_KEY: &str = "graft.adapter";
/// Largest adapter file read, in bytes (the file holds at most the projections).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A parsed, model-independent adapter file.
#[derive(Debug, Clone)]
pub(crate) struct AdapterFile {
    pub config: Config,
    /// The explicit projections: `(tensor name, d, values [L·p, d])`.
    pub projections: Option<(String, usize, Vec<f32>)>,
}

fn tensor_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::TENSOR, field, message)
}

/// Reads a file with a size cap.
pub(crate) fn read_file(path: &str) -> Result<Vec<u8>, PluginError> {
    let p = Path::new(path);
    let io = |e: std::io::Error| PluginError::new(ErrorCode::IO, path, format!("cannot read: {e}"));
    let len = std::fs::metadata(p).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(tensor_err(path, format!("{len} bytes; an error-memory file is at most {MAX_FILE_BYTES}")));
    }
    std::fs::read(p).map_err(io)
}

/// Parses the file bytes; `config` (from the load options) replaces the file's metadata.
pub(crate) fn parse(bytes: &[u8], source: &str, config: Option<Config>) -> Result<AdapterFile, PluginError> {
    let bad = |e: safetensors::SafeTensorError| tensor_err(source, format!("not a valid safetensors file: {e}"));
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let st = SafeTensors::deserialize(bytes).map_err(bad)?;
    let config = match config {
        Some(c) => c,
        None => match header.metadata().as_ref().and_then(|m| m.get(CONFIG_METADATA_KEY)) {
            Some(json) => Config::from_json(json.as_bytes(), CONFIG_METADATA_KEY)?,
            None => {
                return Err(config_err(
                    CONFIG_METADATA_KEY,
                    format!("{source} has no `{CONFIG_METADATA_KEY}` metadata and no `config` load option was given"),
                ));
            }
        },
    };
    let wanted = config.projections.as_deref();
    if let Some(name) = st.names().into_iter().find(|n| Some(*n) != wanted) {
        let why = match wanted {
            Some(p) => format!("unknown tensor (this kind reads only `{p}`, named by `projections`)"),
            None => "unknown tensor (the config names no `projections` tensor)".to_owned(),
        };
        return Err(tensor_err(name, why));
    }
    let projections = match wanted {
        None => None,
        Some(name) => {
            let t = st.tensor(name).map_err(|_| tensor_err(name, "missing (named by `projections`)"))?;
            let rows = (config.tables * config.bits) as usize;
            let d = match t.shape() {
                [r, d] if *r == rows && *d > 0 => *d,
                s => {
                    return Err(PluginError::new(
                        ErrorCode::SHAPE,
                        name,
                        format!("expected [tables·bits = {rows}, d] with d ≥ 1, found {s:?}"),
                    ));
                }
            };
            if t.dtype() != Dtype::F32 {
                return Err(tensor_err(name, format!("dtype {:?}; projections must be F32", t.dtype())));
            }
            let values: Vec<f32> =
                t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(PluginError::new(
                    ErrorCode::NOT_FINITE,
                    name,
                    format!("value at flat index {i} (row {}, column {}) is {}", i / d, i % d, values[i]),
                ));
            }
            Some((name.to_owned(), d, values))
        }
    };
    Ok(AdapterFile { config, projections })
}

/// Writes an adapter file: `config` as `graft.adapter` metadata plus F32 `tensors`
/// (`(name, shape, values)`), atomically. For tests, demos and synthetic generation; the
/// config is validated first, tensors only for size.
pub fn save(
    path: impl AsRef<Path>,
    config: &Config,
    tensors: &[(&str, Vec<usize>, &[f32])],
) -> Result<(), PluginError> {
    config.validate()?;
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), b)
            .map_err(|e| PluginError::new(ErrorCode::SHAPE, *name, format!("shape {shape:?}: {e}")))?;
        views.push((*name, view));
    }
    let metadata = HashMap::from([(CONFIG_METADATA_KEY.to_owned(), config.to_json())]);
    let file = safetensors::serialize(views, Some(metadata))
        .map_err(|e| PluginError::new(ErrorCode::TENSOR, "", format!("serialize: {e}")))?;
    write_atomic(path.as_ref(), &file, "path")
}

/// Memory cells for key width `d` (`S`, `C`, `Kσ`, exact ring), in floats.
pub(crate) fn sketch_floats(config: &Config, d: usize) -> Option<usize> {
    let cells = (config.tables as usize).checked_mul(1usize << config.bits)?;
    let per_cell = if config.estimate == Estimate::TopK { d.checked_add(2)? } else { 2 };
    let exact = if config.estimate == Estimate::Exact {
        (config.exact_capacity as usize).checked_mul(d.checked_add(2)?)?
    } else {
        0
    };
    cells.checked_mul(per_cell)?.checked_add(exact)
}

/// The `notes` both [`inspect_file`] and a loaded adapter report.
pub(crate) fn config_notes(config: &Config) -> Vec<String> {
    let projections = match &config.projections {
        Some(p) => format!("projections=tensor:{p}"),
        None => format!("projections=seed:{}", config.seed),
    };
    vec![
        format!("format_version={}", crate::config::FORMAT_VERSION),
        format!("tables={}", config.tables),
        format!("bits={}", config.bits),
        projections,
        format!("estimate={}", config.estimate.name()),
        format!("top_k={}", config.k()),
        format!("tau={}", config.tau),
        format!("lambda={}", config.lambda),
        format!("space={}", config.space.name()),
        format!("output_is={}", config.output_is.name()),
        format!("decay={}", config.decay),
        format!("threshold={}", config.threshold),
        format!("pending={}", config.pending),
        "method=ReLoop2 error memory, graft's reconstruction (the paper's sketch is not public)".to_owned(),
    ]
}

/// Summarizes an error-memory file without a model: config, targets by name, sizes that
/// do not depend on the model. Refuses what loading would refuse, short of the model checks.
pub fn inspect_file(path: &str) -> Result<AdapterInfo, PluginError> {
    let file = parse(&read_file(path)?, path, None)?;
    let c = &file.config;
    let d = file.projections.as_ref().map(|(_, d, _)| *d);
    let sketch = match (c.estimate, d) {
        (Estimate::Pooled, _) => sketch_floats(c, 0),
        (_, Some(d)) => sketch_floats(c, d),
        (_, None) => None,
    };
    let projection_bytes = file.projections.as_ref().map_or(0, |(_, _, v)| v.len() as u64 * 4);
    let mut notes = config_notes(c);
    notes.push(match d {
        Some(d) => format!("d={d} (from the projections)"),
        None => "d=unknown without a model (the key node's width)".to_owned(),
    });
    notes.push("validated without a model: node names and the key width are not checked".to_owned());
    let target = |module: &str, variant: &str, scale: f32, bytes: u64| TargetInfo {
        module: RString::from(module),
        node: RString::new(),
        rank: 0,
        scale,
        variant: RString::from(variant),
        bytes,
    };
    Ok(AdapterInfo {
        kind: RString::from(crate::KIND),
        source: RString::from(path),
        targets: RVec::from(vec![
            target(&c.key_node, "key", 1.0, projection_bytes),
            target(&c.output_node, "compensate", c.lambda as f32, sketch.map_or(0, |f| f as u64 * 4)),
        ]),
        mapped_bytes: 0,
        owned_bytes: projection_bytes + sketch.map_or(0, |f| f as u64 * 4),
        notes: notes.into_iter().map(RString::from).collect(),
    })
}
