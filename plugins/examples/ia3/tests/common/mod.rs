//! A test host: a `ModelView` over f32 nodes, a scalar `HostKernels` table, temp
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
    Adapter, ErrorCode, HostKernels, HostKernelsRef, KernelStatus, LinearDelta, MatView, MatViewMut, ModelView,
    ModelView_TO, ModelViewRef, NodeInfo, NodeOp, PluginError, WeightView,
};
use graft_plugin_ia3::Ia3Adapter;
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

    pub fn other(name: &str, width: usize) -> Layer {
        Layer { name: name.into(), op: NodeOp::Other, in_features: 0, out_features: width, weight: vec![], bias: None }
    }

    /// `y = x·Wᵀ + b` for every row of `x`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / self.in_features;
        let mut y = vec![0f32; rows * self.out_features];
        for i in 0..rows {
            let xr = &x[i * self.in_features..(i + 1) * self.in_features];
            for o in 0..self.out_features {
                let w = &self.weight[o * self.in_features..(o + 1) * self.in_features];
                let dot: f32 = w.iter().zip(xr).map(|(a, b)| a * b).sum();
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
        0x0069_6133
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

/// The scalar kernel copies one weight row at a time into its scratch, so a kind that
/// hands over too little scratch is caught.
extern "C" fn scratch_floats(w: WeightView<'_>, _rows: usize) -> usize {
    w.cols()
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
    let Some(data) = w.as_f32() else { return KernelStatus::SHAPE_MISMATCH };
    let scratch = scratch.as_mut_slice();
    if scratch.len() < w.cols() {
        return KernelStatus::SCRATCH_TOO_SMALL;
    }
    let cols = w.cols();
    let wrow = &mut scratch[..cols];
    for j in 0..w.rows() {
        wrow.copy_from_slice(&data[j * cols..(j + 1) * cols]);
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

/// Runs one `linear_delta` over the rows of `x`, updating `y` in place.
pub fn run(
    adapter: &Ia3Adapter,
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
pub fn forward(adapter: &Ia3Adapter, target: u32, layer: &Layer, x: &[f32], scale: f32) -> Vec<f32> {
    let mut y = layer.forward(x);
    run(adapter, target, x, layer.in_features, &mut y, layer.out_features, scale).unwrap();
    y
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("graft-ia3-{}-{tag}-{n}", std::process::id()));
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
    FakeModel {
        layers: vec![
            Layer::linear("fc", 2, 3, w.clone(), b.clone()),
            Layer::linear("ff", 2, 3, w, b),
            Layer::other("act", 2),
        ],
    }
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
