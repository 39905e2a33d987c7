//! The ia3 kind's test helpers: safetensors writers, PEFT configs, the worked example
//! and a `linear_delta` driver. The stand-in host (fake model, reference kernels, temp
//! directories, assertions) is `graft_plugin_abi::testing`.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::path::Path;

use graft_plugin_abi::abi_stable::std_types::{ROption, RSliceMut};
pub use graft_plugin_abi::testing::{FakeModel, FakeNode, TempDir, assert_close, assert_err, kernels};
use graft_plugin_abi::{Adapter, LinearDelta, MatView, MatViewMut, NodeOp, PluginError};
use graft_plugin_ia3::Ia3Adapter;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Runs one `linear_delta` over the rows of `x`, updating `y` in place.
pub fn run<A: Adapter>(
    adapter: &A,
    target: u32,
    x: &[f32],
    inf: usize,
    y: &mut [f32],
    out: usize,
    scale: f32,
) -> Result<(), PluginError> {
    let rows = x.len() / inf.max(1);
    let mut scratch = vec![f32::NAN; adapter.scratch_floats(target, rows, kernels())];
    let call = LinearDelta {
        target,
        x: MatView::new(x, rows, inf, inf).unwrap(),
        y: MatViewMut::new(y, rows, out, out).unwrap(),
        base_bias: ROption::RNone,
        scale,
        state: MatView::empty(rows),
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut scratch),
    };
    adapter.linear_delta(call).into_result()
}

/// Base forward of `layer`, then the adapter at `target`.
pub fn forward(adapter: &Ia3Adapter, target: u32, layer: &FakeNode, x: &[f32], scale: f32) -> Vec<f32> {
    let mut y = layer.forward(x);
    run(adapter, target, x, layer.in_features, &mut y, layer.out_features, scale).unwrap();
    y
}

/// A tensor to write: key, dtype, shape, raw little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

pub fn f32_tensor(key: &str, shape: &[usize], v: &[f32]) -> RawTensor {
    (key.to_string(), Dtype::F32, shape.to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// An `ia3_l` vector for `module`.
pub fn vector(module: &str, shape: &[usize], v: &[f32]) -> RawTensor {
    f32_tensor(&format!("base_model.model.{module}.ia3_l"), shape, v)
}

fn views(tensors: &[RawTensor]) -> Vec<(String, TensorView<'_>)> {
    tensors.iter().map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect()
}

pub fn safetensors_bytes(tensors: &[RawTensor]) -> Vec<u8> {
    safetensors::serialize(views(tensors), None).unwrap()
}

/// Writes a PEFT directory with `config` and `tensors`.
pub fn write_dir(dir: &Path, config: &str, tensors: &[RawTensor]) {
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), safetensors_bytes(tensors)).unwrap();
}

/// A PEFT-0.21.2-style IA3 config with `patch` merged in.
pub fn config(patch: serde_json::Value) -> String {
    let mut base = serde_json::json!({
        "auto_mapping": null, "base_model_name_or_path": null, "exclude_modules": null,
        "fan_in_fan_out": false, "feedforward_modules": ["ff"], "inference_mode": true,
        "init_ia3_weights": true, "modules_to_save": null, "peft_type": "IA3",
        "peft_version": "0.21.2", "revision": null, "target_modules": ["fc", "ff"], "task_type": null
    });
    if let (Some(b), Some(p)) = (base.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_string_pretty(&base).unwrap()
}

/// Two 3→2 linears with the same weights: `fc` (output scaling) and `ff` (feedforward),
/// and a non-linear node `act`.
pub fn example_model() -> FakeModel {
    let w = vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0];
    let b = Some(vec![0.5, -0.5]);
    FakeModel::new(vec![
        FakeNode::linear("fc", 2, 3, w.clone(), b.clone()),
        FakeNode::linear("ff", 2, 3, w, b),
        FakeNode::other("act", 2),
    ])
}

pub const EX_X: [f32; 3] = [1.0, 2.0, 3.0];
/// Output-scaling vector of `fc` (`[2, 1]`).
pub const EX_L_OUT: [f32; 2] = [2.0, 0.5];
/// Feedforward vector of `ff` (`[1, 3]`).
pub const EX_L_IN: [f32; 3] = [2.0, 0.0, 0.5];

pub fn example_tensors() -> Vec<RawTensor> {
    vec![vector("fc", &[2, 1], &EX_L_OUT), vector("ff", &[1, 3], &EX_L_IN)]
}

/// Loads from bytes (the same validation as a directory).
pub fn load(
    model: &FakeModel,
    config_json: &str,
    tensors: &[RawTensor],
    options: &str,
) -> Result<Ia3Adapter, PluginError> {
    graft_plugin_ia3::load_bytes("test", config_json.as_bytes(), &safetensors_bytes(tensors), options, &model.view())
}
