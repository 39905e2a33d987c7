//! A test host: a `ModelView` over named nodes (graph inputs, linears, other ops), a scalar
//! f32 `HostKernels` table, temp directories, raw safetensors writers and hook drivers. It
//! stands in for the runtime so that the kind can be tested on its own.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use graft_plugin_abi::abi_stable::prefix_type::PrefixTypeTrait;
use graft_plugin_abi::abi_stable::sabi_trait::TD_Opaque;
use graft_plugin_abi::abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use graft_plugin_abi::{
    Adapter, ErrorCode, HostKernels, HostKernelsRef, KernelStatus, LinearDelta, LoadRequest, MatView, MatViewMut,
    ModelView, ModelView_TO, ModelViewRef, NodeInfo, NodeOp, PluginError, Post, Tap, WeightView,
};
use graft_plugin_ssf_pool::SsfPoolAdapter;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// One node of the fake model.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: NodeOp,
    pub in_features: usize,
    pub out_features: usize,
    /// `[out, in]` row-major (linears only).
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Node {
    pub fn input(name: &str, width: usize) -> Node {
        Node { name: name.into(), op: NodeOp::Input, in_features: 0, out_features: width, weight: vec![], bias: None }
    }

    pub fn other(name: &str, width: usize) -> Node {
        Node { name: name.into(), op: NodeOp::Other, in_features: 0, out_features: width, weight: vec![], bias: None }
    }

    pub fn linear(name: &str, out: usize, inf: usize, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Node {
        assert_eq!(weight.len(), out * inf);
        Node { name: name.into(), op: NodeOp::Linear, in_features: inf, out_features: out, weight, bias }
    }

    /// `y = x·Wᵀ + b` for every row of `x`, in f32 like the fixture's torch reference.
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

/// A model of named nodes; `resolve` maps a module path to the node of the same name, or
/// through `aliases` (several paths naming one node).
#[derive(Debug, Clone, Default)]
pub struct FakeModel {
    pub nodes: Vec<Node>,
    pub aliases: HashMap<String, String>,
}

impl ModelView for FakeModel {
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        let path = module_path.as_str();
        let name = self.aliases.get(path).map_or(path, String::as_str);
        match self.nodes.iter().position(|l| l.name == name) {
            Some(i) => {
                let l = &self.nodes[i];
                RResult::ROk(NodeInfo {
                    node: i as u32,
                    name: RString::from(l.name.as_str()),
                    op: l.op,
                    in_features: l.in_features,
                    out_features: l.out_features,
                    has_bias: l.bias.is_some(),
                    base_format: RString::from("f32"),
                })
            }
            None => RResult::RErr(PluginError::new(ErrorCode::UNKNOWN_MODULE, path, "no node with that name")),
        }
    }

    fn base_weight_row(&self, node: u32, row: usize, mut out: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        let l = &self.nodes[node as usize];
        out.as_mut_slice().copy_from_slice(&l.weight[row * l.in_features..(row + 1) * l.in_features]);
        RResult::ROk(())
    }

    fn base_bias(&self, node: u32) -> ROption<RSlice<'_, f32>> {
        self.nodes[node as usize].bias.as_deref().map(RSlice::from_slice).into()
    }

    fn fingerprint(&self) -> u64 {
        0x7373_6670
    }
}

impl FakeModel {
    pub fn new(nodes: Vec<Node>) -> FakeModel {
        FakeModel { nodes, aliases: HashMap::new() }
    }

    pub fn view(&self) -> ModelViewRef<'_> {
        ModelView_TO::from_ptr(self, TD_Opaque)
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|l| l.name == name).unwrap()
    }

    pub fn index(&self, name: &str) -> u32 {
        self.nodes.iter().position(|l| l.name == name).unwrap() as u32
    }
}

extern "C" fn level() -> RStr<'static> {
    RStr::from_str("test-scalar")
}

/// The scalar kernel copies one weight row at a time into its scratch, so a kind that
/// passes a short or wrong scratch tail is caught.
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
    let Some(wf) = w.as_f32() else { return KernelStatus::SHAPE_MISMATCH };
    if x.cols() != w.cols() || y.cols() != w.rows() || x.rows() != y.rows() {
        return KernelStatus::SHAPE_MISMATCH;
    }
    let scratch = scratch.as_mut_slice();
    if scratch.len() < w.cols() {
        return KernelStatus::SCRATCH_TOO_SMALL;
    }
    let cols = w.cols();
    let wrow = &mut scratch[..cols];
    for j in 0..w.rows() {
        wrow.copy_from_slice(&wf[j * cols..(j + 1) * cols]);
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

/// Scratch for a call at `target` over `rows`, poisoned with NaN so reads of unwritten
/// scratch show up.
pub fn scratch_for<A: Adapter>(adapter: &A, target: u32, rows: usize) -> Vec<f32> {
    vec![f32::NAN; adapter.scratch_floats(target, rows, kernels())]
}

/// Runs the tap at `target` over the rows of `x` (`width` wide), writing `state`.
pub fn tap<A: Adapter>(
    adapter: &A,
    target: u32,
    x: &[f32],
    width: usize,
    state: &mut [f32],
) -> Result<(), PluginError> {
    let rows = x.len() / width;
    let mut scratch = scratch_for(adapter, target, rows);
    tap_with(adapter, target, x, width, state, adapter.state_floats(), &mut scratch)
}

/// `tap` with explicit state width and scratch (for refusal tests).
pub fn tap_with<A: Adapter>(
    adapter: &A,
    target: u32,
    x: &[f32],
    width: usize,
    state: &mut [f32],
    state_cols: usize,
    scratch: &mut [f32],
) -> Result<(), PluginError> {
    let rows = x.len() / width;
    let state_view = if state_cols == 0 {
        MatViewMut::new(state, rows, 0, 0).unwrap()
    } else {
        MatViewMut::new(state, rows, state_cols, state_cols).unwrap()
    };
    let call = Tap {
        target,
        x: MatView::new(x, rows, width, width).unwrap(),
        state: state_view,
        scale: 1.0,
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(scratch),
    };
    adapter.tap(call).into_result()
}

/// Runs the post at `target` over the rows of `y` (`width` wide) with run `state`.
pub fn post<A: Adapter>(
    adapter: &A,
    target: u32,
    y: &mut [f32],
    width: usize,
    state: &[f32],
    scale: f32,
) -> Result<(), PluginError> {
    post_with(adapter, target, y, width, state, adapter.state_floats(), scale)
}

pub fn post_with<A: Adapter>(
    adapter: &A,
    target: u32,
    y: &mut [f32],
    width: usize,
    state: &[f32],
    state_cols: usize,
    scale: f32,
) -> Result<(), PluginError> {
    let rows = y.len() / width;
    let mut tickets = vec![0u64; rows];
    let mut scratch = scratch_for(adapter, target, rows);
    let state_view =
        if state_cols == 0 { MatView::empty(rows) } else { MatView::new(state, rows, state_cols, state_cols).unwrap() };
    let call = Post {
        target,
        y: MatViewMut::new(y, rows, width, width).unwrap(),
        state: state_view,
        tickets: RSliceMut::from_mut_slice(&mut tickets),
        scale,
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut scratch),
    };
    let r = adapter.post(call).into_result();
    assert!(tickets.iter().all(|&t| t == 0), "ssf-pool never issues tickets");
    r
}

/// Runs the head's `linear_delta` at `target`: `x` is `rows × inf`, `y` `rows × out`.
pub fn delta<A: Adapter>(
    adapter: &A,
    target: u32,
    x: &[f32],
    inf: usize,
    y: &mut [f32],
    out: usize,
    state: &[f32],
    scale: f32,
) -> Result<(), PluginError> {
    let rows = x.len() / inf;
    let mut scratch = scratch_for(adapter, target, rows);
    delta_with(adapter, target, x, inf, y, out, state, scale, &mut scratch)
}

pub fn delta_with<A: Adapter>(
    adapter: &A,
    target: u32,
    x: &[f32],
    inf: usize,
    y: &mut [f32],
    out: usize,
    state: &[f32],
    scale: f32,
    scratch: &mut [f32],
) -> Result<(), PluginError> {
    let rows = x.len() / inf;
    let sf = adapter.state_floats();
    let call = LinearDelta {
        target,
        x: MatView::new(x, rows, inf, inf).unwrap(),
        y: MatViewMut::new(y, rows, out, out).unwrap(),
        base_bias: ROption::RNone,
        scale,
        state: MatView::new(state, rows, sf, sf).unwrap(),
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(scratch),
    };
    adapter.linear_delta(call).into_result()
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("graft-ssf-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tensor to write: name, dtype, shape, raw little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

pub fn f32_tensor(name: &str, shape: &[usize], v: &[f32]) -> RawTensor {
    (name.to_string(), Dtype::F32, shape.to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// safetensors bytes of `tensors`, with `config` (raw JSON text) as the `graft.adapter`
/// metadata when given.
pub fn file_bytes(config: Option<&str>, tensors: &[RawTensor]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let meta = config.map(|c| HashMap::from([("graft.adapter".to_string(), c.to_string())]));
    safetensors::serialize(views, meta).unwrap()
}

/// Loads from bytes (the same validation as a file).
pub fn load(model: &FakeModel, bytes: &[u8], options: &str) -> Result<SsfPoolAdapter, PluginError> {
    graft_plugin_ssf_pool::load_bytes("test", bytes, options, &model.view())
}

/// Loads a file through `load_file`.
pub fn load_path(model: &FakeModel, path: &str, options: &str) -> Result<SsfPoolAdapter, PluginError> {
    let req = LoadRequest { id: RStr::from_str("t"), source: RStr::from_str(path), options: RStr::from_str(options) };
    graft_plugin_ssf_pool::load_file(&req, &model.view())
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "index {i}: got {g}, want {w} (tol {tol})");
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

/// Little-endian f32 values of a raw fixture file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Little-endian i64 values of a raw fixture file.
pub fn read_i64(path: &Path) -> Vec<i64> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}
