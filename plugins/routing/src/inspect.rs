//! Inspecting a routing file without a model (`graft adapter inspect FILE`).
//!
//! Everything a file alone decides is checked exactly as loading checks it (configuration,
//! tensor set, shapes, finiteness, folding); only the node checks need a model, so the
//! summary's node names are empty.

use std::path::Path;

use graft_plugin_abi::{AdapterInfo, NodeOp, PluginError};

use crate::adapter::Node;
use crate::config::LoadOptions;
use crate::file::{parse, read_bytes};
use crate::load::Parts;

/// Summarizes a routing file (kind, clusters, dims, mode, bytes) without a model.
pub fn inspect_file(path: impl AsRef<Path>) -> Result<AdapterInfo, PluginError> {
    let path = path.as_ref();
    let source = path.display().to_string();
    let bytes = read_bytes(path)?;
    let (config, tensors) = parse(&bytes, LoadOptions::default(), &source)?;
    let parts = Parts::check(&config, tensors)?;
    let unresolved = |id: u32, op: NodeOp, out_features: usize| Node { id, name: String::new(), op, out_features };
    let (d, out) = (config.input_width(), config.output_width());
    let adapter = parts.build(&source, config, unresolved(0, NodeOp::Other, d), unresolved(1, NodeOp::Other, out))?;
    Ok(adapter.summary())
}
