//! The lora kind's test helpers: safetensors writers, PEFT configs, the worked example
//! and a `linear_delta` driver. The stand-in host (fake model, reference kernels, temp
//! directories, assertions) is `graft_plugin_abi::testing`.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::path::Path;

use graft_plugin_abi::abi_stable::std_types::{RSlice, RSliceMut};
pub use graft_plugin_abi::testing::{FakeModel, FakeNode, TempDir, assert_close, assert_err, kernels};
use graft_plugin_abi::{Adapter, HostKernelsRef, LinearDelta, MatView, MatViewMut, PluginError};
use graft_plugin_lora::LoraAdapter;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Runs one `linear_delta` over `rows` rows of `x`, updating `y` in place.
pub fn run(
    adapter: &LoraAdapter,
    target: u32,
    x: &[f32],
    inf: usize,
    y: &mut [f32],
    out: usize,
    base_bias: Option<&[f32]>,
    scale: f32,
) -> Result<(), PluginError> {
    run_on(kernels(), adapter, target, x, inf, y, out, base_bias, scale)
}

/// [`run`] with another host kernel table.
pub fn run_on(
    kernels: HostKernelsRef,
    adapter: &LoraAdapter,
    target: u32,
    x: &[f32],
    inf: usize,
    y: &mut [f32],
    out: usize,
    base_bias: Option<&[f32]>,
    scale: f32,
) -> Result<(), PluginError> {
    let rows = x.len() / inf;
    let mut scratch = vec![f32::NAN; adapter.scratch_floats(target, rows, kernels)];
    let call = LinearDelta {
        target,
        x: MatView::new(x, rows, inf, inf).unwrap(),
        y: MatViewMut::new(y, rows, out, out).unwrap(),
        base_bias: base_bias.map(RSlice::from_slice).into(),
        scale,
        state: MatView::empty(rows),
        kernels,
        scratch: RSliceMut::from_mut_slice(&mut scratch),
    };
    adapter.linear_delta(call).into_result()
}

/// Base forward of `layer` then the adapter at `target`.
pub fn forward(adapter: &LoraAdapter, target: u32, layer: &FakeNode, x: &[f32], scale: f32) -> Vec<f32> {
    let mut y = layer.forward(x);
    run(adapter, target, x, layer.in_features, &mut y, layer.out_features, layer.bias.as_deref(), scale).unwrap();
    y
}

/// [`forward`] with another host kernel table.
pub fn forward_on(
    kernels: HostKernelsRef,
    adapter: &LoraAdapter,
    target: u32,
    layer: &FakeNode,
    x: &[f32],
    scale: f32,
) -> Vec<f32> {
    let mut y = layer.forward(x);
    run_on(kernels, adapter, target, x, layer.in_features, &mut y, layer.out_features, layer.bias.as_deref(), scale)
        .unwrap();
    y
}

/// A tensor to write: key, dtype, shape, raw little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn f32_tensor(key: &str, shape: &[usize], v: &[f32]) -> RawTensor {
    (key.to_string(), Dtype::F32, shape.to_vec(), f32_bytes(v))
}

fn views(tensors: &[RawTensor]) -> Vec<(String, TensorView<'_>)> {
    tensors.iter().map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect()
}

/// safetensors bytes of `tensors`.
pub fn safetensors_bytes(tensors: &[RawTensor]) -> Vec<u8> {
    safetensors::serialize(views(tensors), None).unwrap()
}

/// Writes a PEFT directory with `config` and `tensors`.
pub fn write_dir(dir: &Path, config: &str, tensors: &[RawTensor]) {
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    safetensors::serialize_to_file(views(tensors), None, &dir.join("adapter_model.safetensors")).unwrap();
}

/// A PEFT-0.21.2-style config with `patch` merged in (keys with `null` in `patch` are set
/// to null, not removed).
pub fn config(patch: serde_json::Value) -> String {
    let mut base = serde_json::json!({
        "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null,
        "base_model_name_or_path": null, "bias": "none", "corda_config": null,
        "ensure_weight_tying": false, "eva_config": null, "exclude_modules": null,
        "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
        "kasa_config": null, "layer_replication": null, "layers_pattern": null,
        "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 4, "lora_bias": false,
        "lora_dropout": 0.0, "lora_ga_config": null, "megatron_config": null,
        "megatron_core": "megatron.core", "modules_to_save": null, "monteclora_config": null,
        "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 2,
        "rank_pattern": {}, "revision": null, "target_modules": ["fc"], "target_parameters": null,
        "task_type": null, "trainable_token_indices": null, "use_bdlora": null, "use_dora": false,
        "use_qalora": false, "use_rslora": false, "velora_config": null
    });
    if let (Some(b), Some(p)) = (base.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_string_pretty(&base).unwrap()
}

/// The §1.7 worked example: layer `fc` and its adapter tensors.
pub fn example_model() -> FakeModel {
    FakeModel::new(vec![FakeNode::linear("fc", 2, 3, vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0], Some(vec![0.5, -0.5]))])
}

pub const EX_X: [f32; 3] = [1.0, 2.0, 3.0];
pub const EX_A: [f32; 6] = [1.0, 2.0, 0.0, 0.0, 1.0, 1.0];
pub const EX_B: [f32; 4] = [1.0, 0.0, 2.0, -1.0];

pub fn example_tensors() -> Vec<RawTensor> {
    vec![
        f32_tensor("base_model.model.fc.lora_A.weight", &[2, 3], &EX_A),
        f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &EX_B),
    ]
}

pub fn dora_tensors() -> Vec<RawTensor> {
    let mut t = example_tensors();
    t.push(f32_tensor("base_model.model.fc.lora_magnitude_vector", &[2], &[5.0, 10.0]));
    t
}

/// Loads from bytes (the same validation as a directory).
pub fn load(
    model: &FakeModel,
    config_json: &str,
    tensors: &[RawTensor],
    options: &str,
) -> Result<LoraAdapter, PluginError> {
    graft_plugin_lora::load_bytes("test", config_json.as_bytes(), safetensors_bytes(tensors), options, &model.view())
}
