//! A test host: a `ModelView` over f32 linear nodes, a scalar `HostKernels` table, temp
//! directories and safetensors writers. It stands in for the runtime so that the kind can
//! be tested on its own.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use graft_plugin_abi::abi_stable::prefix_type::PrefixTypeTrait;
use graft_plugin_abi::abi_stable::sabi_trait::TD_Opaque;
use graft_plugin_abi::abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use graft_plugin_abi::{
    Adapter, ElemFormat, ErrorCode, HostKernels, HostKernelsRef, KernelStatus, LinearDelta, MatView, MatViewMut,
    ModelView, ModelView_TO, ModelViewRef, NodeInfo, NodeOp, PluginError, WeightView,
};
use graft_plugin_lora::LoraAdapter;
use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// One node of the fake model.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub op: NodeOp,
    pub in_features: usize,
    pub out_features: usize,
    /// `[out, in]` row-major.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Layer {
    pub fn linear(name: &str, out: usize, inf: usize, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Layer {
        assert_eq!(weight.len(), out * inf);
        Layer { name: name.into(), op: NodeOp::Linear, in_features: inf, out_features: out, weight, bias }
    }

    /// `y = x·Wᵀ + b` for `rows` rows.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / self.in_features;
        let mut y = vec![0f32; rows * self.out_features];
        for i in 0..rows {
            for o in 0..self.out_features {
                let w = &self.weight[o * self.in_features..(o + 1) * self.in_features];
                let dot: f32 = w.iter().zip(&x[i * self.in_features..]).map(|(a, b)| a * b).sum();
                y[i * self.out_features + o] = dot + self.bias.as_ref().map_or(0.0, |b| b[o]);
            }
        }
        y
    }
}

/// A model of named nodes; `resolve` maps a module path to the node of the same name.
#[derive(Debug, Clone, Default)]
pub struct FakeModel {
    pub layers: Vec<Layer>,
}

impl ModelView for FakeModel {
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        match self.layers.iter().position(|l| l.name == module_path.as_str()) {
            Some(i) => {
                let l = &self.layers[i];
                RResult::ROk(NodeInfo {
                    node: i as u32,
                    name: RString::from(format!("node_{}", l.name)),
                    op: l.op,
                    in_features: l.in_features,
                    out_features: l.out_features,
                    has_bias: l.bias.is_some(),
                    base_format: RString::from("f32"),
                })
            }
            None => RResult::RErr(PluginError::new(
                ErrorCode::UNKNOWN_MODULE,
                module_path.as_str(),
                "no node with that name",
            )),
        }
    }

    fn base_weight_row(&self, node: u32, row: usize, mut out: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        let l = &self.layers[node as usize];
        out.as_mut_slice().copy_from_slice(&l.weight[row * l.in_features..(row + 1) * l.in_features]);
        RResult::ROk(())
    }

    fn base_bias(&self, node: u32) -> ROption<RSlice<'_, f32>> {
        self.layers[node as usize].bias.as_deref().map(RSlice::from_slice).into()
    }

    fn fingerprint(&self) -> u64 {
        0x6661_6b65
    }
}

impl FakeModel {
    pub fn view(&self) -> ModelViewRef<'_> {
        ModelView_TO::from_ptr(self, TD_Opaque)
    }

    pub fn layer(&self, name: &str) -> &Layer {
        self.layers.iter().find(|l| l.name == name).unwrap()
    }
}

extern "C" fn level() -> RStr<'static> {
    RStr::from_str("test-scalar")
}

/// The scalar kernel decodes one weight row at a time into its scratch, so a kind that
/// passes the wrong scratch tail is caught.
extern "C" fn scratch_floats(w: WeightView<'_>, _rows: usize) -> usize {
    w.cols()
}

fn decode_row(w: &WeightView<'_>, j: usize, out: &mut [f32]) {
    let cols = w.cols();
    match w.format() {
        ElemFormat::F32 => out.copy_from_slice(&w.as_f32().unwrap()[j * cols..(j + 1) * cols]),
        ElemFormat::F16 => {
            for (o, &b) in out.iter_mut().zip(&w.as_u16().unwrap()[j * cols..(j + 1) * cols]) {
                *o = f16::from_bits(b).to_f32();
            }
        }
        ElemFormat::Bf16 => {
            for (o, &b) in out.iter_mut().zip(&w.as_u16().unwrap()[j * cols..(j + 1) * cols]) {
                *o = bf16::from_bits(b).to_f32();
            }
        }
    }
}

extern "C" fn linear(
    x: MatView<'_>,
    w: WeightView<'_>,
    alpha: f32,
    accumulate: bool,
    mut y: MatViewMut<'_>,
    mut scratch: RSliceMut<'_, f32>,
) -> KernelStatus {
    if x.cols() != w.cols() || y.cols() != w.rows() || x.rows() != y.rows() {
        return KernelStatus::SHAPE_MISMATCH;
    }
    let scratch = scratch.as_mut_slice();
    if scratch.len() < w.cols() {
        return KernelStatus::SCRATCH_TOO_SMALL;
    }
    let wrow = &mut scratch[..w.cols()];
    for j in 0..w.rows() {
        decode_row(&w, j, wrow);
        for i in 0..x.rows() {
            let dot: f32 = x.row(i).iter().zip(wrow.iter()).map(|(a, b)| a * b).sum();
            let yr = y.row_mut(i);
            yr[j] = if accumulate { yr[j] + alpha * dot } else { alpha * dot };
        }
    }
    KernelStatus::OK
}

/// The test kernel table.
pub fn kernels() -> HostKernelsRef {
    static K: OnceLock<HostKernelsRef> = OnceLock::new();
    *K.get_or_init(|| HostKernels { level, scratch_floats, linear }.leak_into_prefix())
}

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
    let rows = x.len() / inf;
    let mut scratch = vec![f32::NAN; adapter.scratch_floats(target, rows, kernels())];
    let call = LinearDelta {
        target,
        x: MatView::new(x, rows, inf, inf).unwrap(),
        y: MatViewMut::new(y, rows, out, out).unwrap(),
        base_bias: base_bias.map(RSlice::from_slice).into(),
        scale,
        state: MatView::empty(rows),
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut scratch),
    };
    adapter.linear_delta(call).into_result()
}

/// Base forward of `layer` then the adapter at `target`.
pub fn forward(adapter: &LoraAdapter, target: u32, layer: &Layer, x: &[f32], scale: f32) -> Vec<f32> {
    let mut y = layer.forward(x);
    run(adapter, target, x, layer.in_features, &mut y, layer.out_features, layer.bias.as_deref(), scale).unwrap();
    y
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("graft-lora-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    FakeModel { layers: vec![Layer::linear("fc", 2, 3, vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0], Some(vec![0.5, -0.5]))] }
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

pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "index {i}: got {g}, want {w} (tol {tol}); {got:?} vs {want:?}");
    }
}

/// Asserts an error's code and field.
pub fn assert_err<T: std::fmt::Debug>(r: Result<T, PluginError>, code: ErrorCode, field: &str) -> PluginError {
    match r {
        Ok(v) => panic!("expected {} error on `{field}`, got Ok({v:?})", code.name()),
        Err(e) => {
            assert_eq!((e.code, e.field.as_str()), (code, field), "wrong error: {e}");
            e
        }
    }
}
