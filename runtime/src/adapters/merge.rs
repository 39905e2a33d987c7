//! Folding an adapter into a copy of its base model (`graft adapter merge`).
//!
//! graft runs adapters unmerged: that keeps the base quantized and mapped, lets every row
//! pick its own adapter, and makes a swap a pointer store. Merging is for the rest — a
//! deployment that serves one adapter forever on a float base. It is refused for
//! quantized bases (merging would re-quantize and change outputs; PEFT warns about the
//! same rounding), and merged weights are written in f32 whatever the float base format
//! was, so the merged model computes exactly what the unmerged f32 adapter path computes
//! instead of rounding the sum back to f16/bf16. Every tensor that is not merged is
//! copied byte for byte; a model whose file changed on disk (see `Model::check_file`) is
//! refused, before and after the copy. The output is written through
//! `graft_plugin_abi::files` (regular files only, unique temporary name).

use std::path::Path;

use abi_stable::std_types::RSliceMut;
use graft_plugin_abi::MatViewMut;
use serde_json::Value;

use super::registry::LoadedAdapter;
use crate::container::GRAPH_KEY;
use crate::error::{Error, Result};
use crate::format::{DType, WeightFormat};
use crate::graph::Op;
use crate::model::Model;
use crate::writer::{TensorOut, write_file};

/// What a merge changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeReport {
    /// Linear nodes whose weights were replaced.
    pub nodes: Vec<String>,
    /// Bytes written.
    pub bytes: u64,
}

fn refuse(detail: String) -> Error {
    Error::InvalidOption { detail }
}

/// Writes `model` with `adapter` merged into its weights to `path`.
pub fn merge_to_file(model: &Model, adapter: &LoadedAdapter, path: &Path) -> Result<MergeReport> {
    if !adapter.model().same_as(model) {
        return Err(Error::AdapterModel { id: adapter.id().into() });
    }
    model.check_file()?;
    let g = model.graph();
    let json = model.envelope().metadata.get(GRAPH_KEY).ok_or_else(|| refuse("the model has no graph".into()))?;
    let mut graph: Value = serde_json::from_str(json).map_err(|e| refuse(format!("graph JSON: {e}")))?;
    // New contents per tensor name.
    let mut replaced: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> = Default::default();
    let mut nodes = Vec::new();
    for (t, target) in adapter.targets().iter().enumerate() {
        let node = g.nodes.get(target.node as usize).ok_or_else(|| {
            refuse(format!(
                "adapter `{}` taps a graph input: only hooks at linear layers fold into weights",
                adapter.id()
            ))
        })?;
        let Op::Linear { weight, bias } = node.op else {
            return Err(refuse(format!(
                "adapter `{}` hooks `{}` ({}): only hooks at linear layers fold into weights; serve it unmerged",
                adapter.id(),
                node.name,
                node.op.name()
            )));
        };
        let def = &g.weights[weight];
        if !matches!(def.format, WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16) {
            return Err(refuse(format!(
                "node `{}` has a {} base weight: merging would re-quantize it and change outputs; \
                 serve the adapter unmerged instead",
                node.name,
                def.format.as_str()
            )));
        }
        let w = model.weight(weight)?;
        let (rows, cols) = (w.rows, w.cols);
        let mut values = vec![0.0f32; rows * cols];
        for (r, row) in values.chunks_mut(cols).enumerate() {
            w.dequant_row(r, row);
        }
        let mut b = match bias {
            Some(bt) => model.vector(bt)?.to_vec(),
            None => vec![0.0; rows],
        };
        let view = MatViewMut::new(&mut values, rows, cols, cols).ok_or_else(|| refuse("weight view".into()))?;
        adapter
            .object()
            .merge(t as u32, view, RSliceMut::from_mut_slice(&mut b))
            .into_result()
            .map_err(|e| adapter.hook_error(e))?;
        if let Some(i) = values.iter().chain(&b).position(|v| !v.is_finite()) {
            return Err(refuse(format!("merging into `{}` gives a non-finite value at {i}", node.name)));
        }
        let bias_name = match bias {
            Some(bt) => model.envelope().tensors[bt].name.clone(),
            None if b.iter().all(|&v| v == 0.0) => String::new(),
            None => {
                let name = format!("{}.merged_bias", node.name);
                let entry = graph["nodes"]
                    .as_array_mut()
                    .and_then(|ns| ns.iter_mut().find(|n| n["name"] == node.name.as_str()));
                let entry = entry.ok_or_else(|| refuse(format!("node `{}` not in the graph JSON", node.name)))?;
                entry["bias"] = Value::String(name.clone());
                name
            }
        };
        if !bias_name.is_empty() {
            replaced.insert(bias_name, (vec![rows], b));
        }
        graph["weights"][def.name.as_str()]["format"] = Value::String("f32".into());
        replaced.insert(model.envelope().tensors[def.data].name.clone(), (vec![rows, cols], values));
        nodes.push(node.name.clone());
    }
    let mut tensors: Vec<TensorOut<'_>> = Vec::new();
    for info in &model.envelope().tensors {
        match replaced.remove(&info.name) {
            Some((shape, values)) => tensors.push(TensorOut::bytes(
                info.name.clone(),
                DType::F32,
                shape,
                bytemuck::cast_slice(&values).to_vec(),
            )),
            None => {
                // Streamed from the mapping, never copied into memory.
                let bytes = model.tensor_bytes(info);
                tensors.push(TensorOut {
                    name: info.name.clone(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    producer: Box::new(move |w| w.write_all(bytes)),
                })
            }
        }
    }
    // Biases that did not exist before.
    for (name, (shape, values)) in replaced {
        tensors.push(TensorOut::bytes(name, DType::F32, shape, bytemuck::cast_slice(&values).to_vec()));
    }
    let bytes = write_file(path, &graph.to_string(), tensors)?;
    // Tensors were streamed from the mapping: if the model's file changed meanwhile, the
    // merged file may mix versions, so it is removed and the merge fails.
    if let Err(e) = model.check_file() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(MergeReport { nodes, bytes })
}
