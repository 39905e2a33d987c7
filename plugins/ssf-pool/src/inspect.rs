//! Inspecting an adapter file without a model (`graft adapter inspect FILE`).
//!
//! A probe view stands in for the model: every module path the config names resolves to a
//! node whose shape is read from the file's own tensors (the query from `keys`, a site from
//! its `gamma`, the head from its `weight`). The full loader then runs unchanged, so the
//! summary reports exactly what loading would use; only the checks that need the real
//! model (node names, layer widths, node kinds) are left out.

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use graft_plugin_abi::{Adapter, AdapterInfo, ErrorCode, ModelView, ModelView_TO, NodeInfo, NodeOp, PluginError};

use crate::file::AdapterFile;
use crate::load::{build, read_config};

/// Module path → node, from the file's tensor shapes.
struct Probe {
    nodes: Vec<(String, NodeOp, usize, usize)>,
}

impl Probe {
    /// Adds `path` unless already there (earlier calls win: head, then sites, then query).
    fn add(&mut self, path: &str, op: NodeOp, in_features: usize, out_features: usize) {
        if !self.nodes.iter().any(|n| n.0 == path) {
            self.nodes.push((path.to_owned(), op, in_features, out_features));
        }
    }
}

impl ModelView for Probe {
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        let path = module_path.as_str();
        match self.nodes.iter().position(|n| n.0 == path) {
            Some(i) => {
                let (name, op, in_features, out_features) = &self.nodes[i];
                RResult::ROk(NodeInfo {
                    node: i as u32,
                    name: RString::from(name.as_str()),
                    op: *op,
                    in_features: *in_features,
                    out_features: *out_features,
                    has_bias: false,
                    base_format: RString::from("unknown"),
                })
            }
            None => RResult::RErr(PluginError::new(ErrorCode::UNKNOWN_MODULE, path, "not named by the config")),
        }
    }

    fn base_weight_row(&self, _node: u32, _row: usize, mut out: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        out.as_mut_slice().fill(0.0);
        RResult::ROk(())
    }

    fn base_bias(&self, _node: u32) -> ROption<RSlice<'_, f32>> {
        ROption::RNone
    }

    fn fingerprint(&self) -> u64 {
        0
    }
}

/// Summarizes an `ssf-pool` file (sites, pool size, top_k, head, bytes) without a model.
pub fn inspect_file(path: &str) -> Result<AdapterInfo, PluginError> {
    inspect_file_with_options(path, "")
}

/// As [`inspect_file`], with load options (a `config` for a file that has no
/// `graft.adapter` metadata).
pub fn inspect_file_with_options(path: &str, options: &str) -> Result<AdapterInfo, PluginError> {
    let bytes = std::fs::read(path).map_err(|e| PluginError::new(ErrorCode::IO, path, format!("cannot read: {e}")))?;
    let file = AdapterFile::parse(&bytes, path)?;
    let (config, _) = read_config(&file, options)?;
    let dims = |name: &str| file.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
    let last = |name: &str| dims(name).last().copied().unwrap_or(0);

    let mut probe = Probe { nodes: Vec::new() };
    if let Some(h) = &config.head {
        let (out, inf) = match dims(&h.weight)[..] {
            [_, out, inf] => (out, inf),
            _ => (0, 0),
        };
        probe.add(&h.node, NodeOp::Linear, inf, out);
    }
    for s in &config.sites {
        probe.add(&s.node, NodeOp::Other, 0, last(&s.gamma));
    }
    if let Some(p) = &config.pool {
        probe.add(&p.query, NodeOp::Input, 0, last(&p.keys));
    }
    let adapter = build(path, &bytes, options, &ModelView_TO::from_ptr(&probe, TD_Opaque))?;
    let mut info = adapter.info();
    info.notes.push(RString::from("validated without a model: node shapes taken from the file"));
    Ok(info)
}
