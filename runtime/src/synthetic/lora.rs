//! Seeded PEFT LoRA directories for any model, for the demo, benchmarks and soak tests.
//!
//! [`write_peft_lora`] writes `adapter_config.json` + `adapter_model.safetensors` exactly
//! in the layout PEFT's `save_pretrained` produces (keys `base_model.model.<node>.lora_A
//! .weight`, …), so what the demo serves goes through the same loader as a real PEFT
//! adapter. Values follow the fixture generator: `A ~ U(±1/√in)`, `B ~ N(0, σ²)` with σ
//! chosen so the adapter moves each layer's output by a visible but modest amount, and
//! DoRA magnitudes `‖W‖_row · U(0.75, 1.25)`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::Rng;
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::model::Model;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// Rank of every adapted layer.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f32,
    /// rsLoRA scaling (`alpha / √r`).
    pub rslora: bool,
    /// DoRA (adds magnitude vectors).
    pub dora: bool,
    /// Linear nodes to adapt; `None` adapts every linear.
    pub targets: Option<Vec<String>>,
    /// Seed of the values.
    pub seed: u64,
    /// Size of the adapter's effect relative to the base layer (0.4 in the fixtures).
    pub strength: f32,
}

impl LoraSpec {
    /// Plain LoRA of rank `rank` (alpha = 2·rank) on every linear.
    pub fn every_linear(rank: usize, seed: u64) -> LoraSpec {
        LoraSpec { rank, alpha: 2.0 * rank as f32, rslora: false, dora: false, targets: None, seed, strength: 0.4 }
    }

    fn scale(&self) -> f32 {
        if self.rslora { self.alpha / (self.rank as f32).sqrt() } else { self.alpha / self.rank as f32 }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Writes a PEFT LoRA directory for `model` into `dir` (created if needed). Returns the
/// size of the tensor file in bytes.
pub fn write_peft_lora(model: &Model, dir: &Path, spec: &LoraSpec) -> Result<u64> {
    if spec.rank == 0 {
        return Err(Error::InvalidOption { detail: "LoRA rank must be at least 1".into() });
    }
    let g = model.graph();
    let mut rng = Rng::new(spec.seed);
    let scale = spec.scale();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut targets = Vec::new();
    for node in &g.nodes {
        let Op::Linear { weight, .. } = node.op else { continue };
        if spec.targets.as_ref().is_some_and(|t| !t.contains(&node.name)) {
            continue;
        }
        let w = model.weight(weight)?;
        let (out, inp, r) = (w.rows, w.cols, spec.rank);
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..r * inp).map(|_| (2.0 * rng.uniform() - 1.0) * bound).collect();
        let sigma = spec.strength * (6.0 / (r as f32 * scale * scale)).sqrt() * 0.4;
        let b: Vec<f32> = (0..out * r).map(|_| rng.normal() * sigma).collect();
        let key = format!("base_model.model.{}", node.name);
        if spec.dora {
            let mut row = vec![0.0f32; inp];
            let m = (0..out)
                .map(|o| {
                    w.dequant_row(o, &mut row);
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-3);
                    norm * (0.75 + 0.5 * rng.uniform())
                })
                .collect();
            tensors.push((format!("{key}.lora_magnitude_vector"), vec![out], m));
        }
        tensors.push((format!("{key}.lora_A.weight"), vec![r, inp], a));
        tensors.push((format!("{key}.lora_B.weight"), vec![out, r], b));
        targets.push(node.name.clone());
    }
    if targets.is_empty() {
        return Err(Error::InvalidOption { detail: "no linear node matches the requested targets".into() });
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values))
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::InvalidOption { detail: format!("tensor {name}: {e}") })
        })
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let tensor_path = dir.join("adapter_model.safetensors");
    safetensors::serialize_to_file(views, Some(metadata), &tensor_path)
        .map_err(|e| Error::InvalidOption { detail: format!("{}: {e}", tensor_path.display()) })?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "use_rslora": spec.rslora,
        "use_dora": spec.dora,
        "target_modules": targets,
        "bias": "none",
        "lora_dropout": 0.0,
        "fan_in_fan_out": false,
        "lora_bias": false,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true,
        "task_type": null,
        "peft_version": "graft-synthetic",
    });
    let config_path = dir.join("adapter_config.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap_or_default())
        .map_err(io_err(&config_path))?;
    std::fs::metadata(&tensor_path).map(|m| m.len()).map_err(io_err(&tensor_path))
}
