//! Inspecting a PEFT directory without a model (`graft adapter inspect DIR`).
//!
//! The loader validates against a model; without one, a probe view stands in for it: every
//! module path resolves to a linear whose shape is read from the file's own `lora_A` /
//! `lora_B` tensors, with a zero base weight. The full loader then runs unchanged (config,
//! keys, ranks, dtypes, finiteness), so inspection reports exactly what loading would use,
//! except the checks that need the real model (node names, layer shapes, DoRA norms).

use std::collections::HashMap;
use std::path::Path;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use graft_plugin_abi::{AdapterInfo, ErrorCode, LoadRequest, ModelView, ModelView_TO, NodeInfo, NodeOp, PluginError};
use safetensors::SafeTensors;

use crate::load::{TENSOR_FILE, load_dir};

/// Module path → (in, out) from the file's factor shapes.
struct Probe {
    shapes: HashMap<String, (usize, usize)>,
    names: Vec<String>,
}

impl ModelView for Probe {
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        let path = module_path.as_str();
        match (self.shapes.get(path), self.names.iter().position(|n| n == path)) {
            (Some(&(in_features, out_features)), Some(node)) => RResult::ROk(NodeInfo {
                node: node as u32,
                name: RString::new(),
                op: NodeOp::Linear,
                in_features,
                out_features,
                has_bias: false,
                base_format: RString::from("unknown"),
            }),
            _ => RResult::RErr(PluginError::new(ErrorCode::UNKNOWN_MODULE, path, "no lora_A/lora_B pair in the file")),
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

/// Summarizes a PEFT LoRA directory (kind, modules, ranks, scales, bytes) without a model.
pub fn inspect_dir(dir: &str) -> Result<AdapterInfo, PluginError> {
    let path = Path::new(dir).join(TENSOR_FILE);
    let bytes = std::fs::read(&path)
        .map_err(|e| PluginError::new(ErrorCode::IO, TENSOR_FILE, format!("cannot read {}: {e}", path.display())))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| PluginError::new(ErrorCode::TENSOR, TENSOR_FILE, e.to_string()))?;
    let mut shapes: HashMap<String, (usize, usize)> = HashMap::new();
    for (name, view) in st.tensors() {
        let Some(rest) = name.strip_prefix("base_model.model.") else { continue };
        let shape = view.shape();
        if let (Some(module), [_, cols]) = (rest.strip_suffix(".lora_A.weight"), shape) {
            shapes.entry(module.to_string()).or_insert((0, 0)).0 = *cols;
        } else if let (Some(module), [rows, _]) = (rest.strip_suffix(".lora_B.weight"), shape) {
            shapes.entry(module.to_string()).or_insert((0, 0)).1 = *rows;
        }
    }
    let mut names: Vec<String> = shapes.keys().cloned().collect();
    names.sort();
    let probe = Probe { shapes, names };
    let request =
        LoadRequest { id: RStr::from_str("inspect"), source: RStr::from_str(dir), options: RStr::from_str("") };
    let adapter = load_dir(&request, &ModelView_TO::from_ptr(&probe, TD_Opaque))?;
    let mut info = graft_plugin_abi::Adapter::info(&adapter);
    info.notes.push(RString::from("validated without a model: node shapes taken from the file"));
    Ok(info)
}
