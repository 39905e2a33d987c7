//! Seeded adapter files of the Adapters II kinds (`ssf-pool`, `routing`,
//! `error-memory`) for any model, for the demo and benchmarks.
//!
//! Each is one safetensors file whose `graft.adapter` metadata is the kind's JSON
//! configuration, written here directly (no dependency on the kinds' crates), so what the
//! demo serves goes through the same loaders as a file written by a training script.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

use super::Rng;
use crate::adapters::ADAPTER_METADATA_KEY;
use crate::error::{Error, Result};
use crate::model::Model;

/// A tensor to write: name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Writes a graft adapter file: `tensors` (F32) with `config` under `graft.adapter`.
/// Returns the file size in bytes.
pub fn write_adapter_file(path: &Path, config: &Value, tensors: &[NamedTensor]) -> Result<u64> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values))
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::InvalidOption { detail: format!("tensor {name}: {e}") })
        })
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [(ADAPTER_METADATA_KEY.to_string(), config.to_string())].into();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| Error::InvalidOption { detail: format!("{}: {e}", path.display()) })?;
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| Error::io(path, e))
}

/// The width of `node` (resolved like adapter module names) or of a dense input.
fn width(model: &Model, node: &str) -> Result<usize> {
    let g = model.graph();
    if let Some(input) = g.inputs.iter().position(|i| i.name == node) {
        return Ok(g.value_width(crate::graph::ValueId::Input(input)));
    }
    crate::adapters::resolve_module(g, &crate::adapters::ModuleMap::new(), node)
        .map(|n| g.nodes[n].width)
        .map_err(|detail| Error::InvalidOption { detail })
}

/// What [`write_ssf_pool`] generates.
#[derive(Clone, Debug, PartialEq)]
pub struct SsfPoolSpec<'a> {
    /// The node (or dense input) whose base value is the query.
    pub query: &'a str,
    /// Nodes whose outputs get a scale and shift.
    pub sites: &'a [&'a str],
    /// Pool entries.
    pub pool: usize,
    /// Entries averaged per row.
    pub top_k: usize,
    /// γ ≈ 1 ± strength, β ≈ ± strength / 2.
    pub strength: f32,
    /// Seed of the values.
    pub seed: u64,
}

/// A FedIns SSF pool: entries picked per row by cosine against the base value of the
/// query, scale-shift at each site.
pub fn write_ssf_pool(model: &Model, path: &Path, spec: &SsfPoolSpec<'_>) -> Result<u64> {
    let SsfPoolSpec { query, sites, pool, top_k, strength, seed } = *spec;
    let mut rng = Rng::new(seed);
    let d = width(model, query)?;
    let mut tensors: Vec<NamedTensor> =
        vec![("keys".into(), vec![pool, d], (0..pool * d).map(|_| rng.normal()).collect())];
    let mut site_configs = Vec::new();
    for (s, site) in sites.iter().enumerate() {
        let c = width(model, site)?;
        let gamma = (0..pool * c).map(|_| 1.0 + strength * rng.normal()).collect();
        let beta = (0..pool * c).map(|_| 0.5 * strength * rng.normal()).collect();
        tensors.push((format!("gamma_{s}"), vec![pool, c], gamma));
        tensors.push((format!("beta_{s}"), vec![pool, c], beta));
        site_configs.push(json!({"node": site, "gamma": format!("gamma_{s}"), "beta": format!("beta_{s}")}));
    }
    let config = json!({
        "kind": "ssf-pool", "format_version": 1, "sites": site_configs,
        "pool": {"keys": "keys", "query": query, "top_k": top_k, "query_eps": 1e-12, "base_query": true},
    });
    write_adapter_file(path, &config, &tensors)
}

/// An AdaptDHM routing adapter: `clusters` unit-norm centers over `input`, towers of
/// `hidden` widths ending in `output`'s width, replacing `output` (a logit).
pub fn write_routing(
    model: &Model,
    path: &Path,
    input: &str,
    output: &str,
    clusters: usize,
    hidden: &[usize],
    seed: u64,
) -> Result<u64> {
    let mut rng = Rng::new(seed);
    let mut dims = vec![width(model, input)?];
    dims.extend_from_slice(hidden);
    dims.push(width(model, output)?);
    let mut centers: Vec<f32> = (0..clusters * dims[0]).map(|_| rng.normal()).collect();
    for c in centers.chunks_mut(dims[0]) {
        let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        c.iter_mut().for_each(|v| *v /= norm);
    }
    let mut tensors: Vec<NamedTensor> = vec![("centers".into(), vec![clusters, dims[0]], centers)];
    for l in 0..dims.len() - 1 {
        let (i, o) = (dims[l], dims[l + 1]);
        let std = (2.0 / i as f32).sqrt();
        tensors.push((format!("shared.{l}.weight"), vec![i, o], (0..i * o).map(|_| rng.normal() * std).collect()));
        for j in 0..clusters {
            let w = (0..i * o).map(|_| 1.0 + 0.3 * rng.normal()).collect();
            tensors.push((format!("cluster.{j}.{l}.weight"), vec![i, o], w));
        }
    }
    let config = json!({
        "kind": "routing", "format_version": 1, "input_node": input, "output_node": output,
        "output_is": "logit", "clusters": clusters, "dims": dims, "activation": "relu",
        "mode": "hard", "use_bias": false,
    });
    write_adapter_file(path, &config, &tensors)
}

/// An empty ReLoop2 error memory keyed on `key` compensating `output` (probabilities).
pub fn write_error_memory(
    path: &Path,
    key: &str,
    output: &str,
    tables: usize,
    bits: usize,
    lambda: f32,
) -> Result<u64> {
    let config = json!({
        "kind": "error-memory", "format_version": 1, "key_node": key, "output_node": output,
        "output_is": "prob", "tables": tables, "bits": bits, "seed": 7, "estimate": "pooled",
        "lambda": lambda, "space": "prob", "decay": 1.0, "threshold": 0.0,
    });
    write_adapter_file(path, &config, &[])
}
