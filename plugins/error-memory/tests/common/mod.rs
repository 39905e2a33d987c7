//! A test host: a `ModelView` of named nodes with a settable fingerprint, a scalar
//! `HostKernels` table, temp directories, and helpers that drive the tap → post →
//! feedback cycle the way the runtime does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use graft_plugin_abi::abi_stable::prefix_type::PrefixTypeTrait;
use graft_plugin_abi::abi_stable::sabi_trait::TD_Opaque;
use graft_plugin_abi::abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use graft_plugin_abi::{
    Adapter, ElemFormat, ErrorCode, HostKernels, HostKernelsRef, KernelStatus, LoadRequest, MatView, MatViewMut,
    ModelView, ModelView_TO, ModelViewRef, NodeInfo, NodeOp, PluginError, Post, Tap, WeightView,
};
use graft_plugin_error_memory::{COMPENSATE_TARGET, Config, ErrorMemory, KEY_TARGET};

/// One node: a name, an op and an output width.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: NodeOp,
    pub width: usize,
}

/// A model of named nodes; `resolve` maps a path to the node of the same name.
#[derive(Debug, Clone)]
pub struct FakeModel {
    pub nodes: Vec<Node>,
    pub fingerprint: u64,
}

impl ModelView for FakeModel {
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        match self.nodes.iter().position(|n| n.name == module_path.as_str()) {
            Some(i) => {
                let n = &self.nodes[i];
                RResult::ROk(NodeInfo {
                    node: i as u32,
                    name: RString::from(format!("/{}", n.name)),
                    op: n.op,
                    in_features: 0,
                    out_features: n.width,
                    has_bias: false,
                    base_format: RString::from("f32"),
                })
            }
            None => RResult::RErr(PluginError::new(ErrorCode::UNKNOWN_MODULE, module_path.as_str(), "no such node")),
        }
    }

    fn base_weight_row(&self, _node: u32, _row: usize, _out: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(ErrorCode::UNSUPPORTED, "", "no weights in this fake"))
    }

    fn base_bias(&self, _node: u32) -> ROption<RSlice<'_, f32>> {
        ROption::RNone
    }

    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

impl FakeModel {
    /// A key node `h` of width `d` (an activation), an output node `p` of width 1, a wide
    /// node `wide` (width 3) and a graph input `x` (width `d`).
    pub fn new(d: usize) -> FakeModel {
        let node = |name: &str, op, width| Node { name: name.into(), op, width };
        FakeModel {
            nodes: vec![
                node("x", NodeOp::Input, d),
                node("h", NodeOp::Other, d),
                node("p", NodeOp::Other, 1),
                node("wide", NodeOp::Linear, 3),
            ],
            fingerprint: 0x0123_4567_89ab_cdef,
        }
    }

    pub fn view(&self) -> ModelViewRef<'_> {
        ModelView_TO::from_ptr(self, TD_Opaque)
    }
}

extern "C" fn level() -> RStr<'static> {
    RStr::from_str("test-scalar")
}

/// The scalar kernel copies one weight row at a time into its scratch, so a kind that
/// hands it the wrong scratch tail is caught.
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
    if x.cols() != w.cols() || y.cols() != w.rows() || x.rows() != y.rows() || w.format() != ElemFormat::F32 {
        return KernelStatus::SHAPE_MISMATCH;
    }
    let scratch = scratch.as_mut_slice();
    if scratch.len() < w.cols() {
        return KernelStatus::SCRATCH_TOO_SMALL;
    }
    let cols = w.cols();
    let wrow = &mut scratch[..cols];
    let all = w.as_f32().unwrap();
    for j in 0..w.rows() {
        wrow.copy_from_slice(&all[j * cols..(j + 1) * cols]);
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

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("graft-em-{}-{tag}-{n}", std::process::id()));
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

/// Loads `path` against `model` through the kind's own loader.
pub fn load(model: &FakeModel, path: &str, options: &str) -> Result<ErrorMemory, PluginError> {
    let req = LoadRequest { id: RStr::from_str("t"), source: RStr::from_str(path), options: RStr::from_str(options) };
    graft_plugin_error_memory::load_file(&req, &model.view())
}

/// Writes `config` (+ tensors) to `dir/name` and loads it.
pub fn build(
    dir: &TempDir,
    name: &str,
    model: &FakeModel,
    config: &Config,
    tensors: &[(&str, Vec<usize>, &[f32])],
    options: &str,
) -> Result<ErrorMemory, PluginError> {
    let path = dir.file(name);
    graft_plugin_error_memory::save(&path, config, tensors).unwrap();
    load(model, &path, options)
}

/// Runs the key tap over `keys` (`rows × d`), returning the run state.
pub fn tap(a: &ErrorMemory, keys: &[f32]) -> Result<Vec<f32>, PluginError> {
    let d = a.key_width();
    let rows = keys.len() / d;
    let width = a.state_floats();
    let mut state = vec![0.0f32; rows * width];
    let mut scratch = vec![f32::NAN; a.scratch_floats(KEY_TARGET, rows, kernels())];
    let call = Tap {
        target: KEY_TARGET,
        x: MatView::new(keys, rows, d, d).unwrap(),
        state: MatViewMut::new(&mut state, rows, width, width).unwrap(),
        scale: 1.0,
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut scratch),
    };
    a.tap(call).into_result()?;
    Ok(state)
}

/// Runs the post over `y` (one value per row) with run state `state`; returns tickets.
pub fn post(a: &ErrorMemory, state: &[f32], y: &mut [f32], scale: f32) -> Result<Vec<u64>, PluginError> {
    let rows = y.len();
    let width = a.state_floats();
    let mut tickets = vec![0u64; rows];
    let call = Post {
        target: COMPENSATE_TARGET,
        y: MatViewMut::new(y, rows, 1, 1).unwrap(),
        state: MatView::new(state, rows, width, width).unwrap(),
        tickets: RSliceMut::from_mut_slice(&mut tickets),
        scale,
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut []),
    };
    a.post(call).into_result()?;
    Ok(tickets)
}

/// One row through tap and post: the compensated value and its ticket.
pub fn serve(a: &ErrorMemory, h: &[f32], y: f32, scale: f32) -> (f32, u64) {
    let state = tap(a, h).unwrap();
    let mut y = [y];
    let t = post(a, &state, &mut y, scale).unwrap();
    (y[0], t[0])
}

/// Serves one row with base prediction `y_hat`, then feeds back `label`.
pub fn learn(a: &ErrorMemory, h: &[f32], y_hat: f32, label: f32) {
    let (_, t) = serve(a, h, y_hat, 1.0);
    assert_ne!(t, 0);
    a.feedback(t, label).into_result().unwrap();
}

/// Reads an F32 tensor from a safetensors file.
pub fn read_tensor(path: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (t.shape().to_vec(), v)
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

/// A small deterministic generator for test data (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f32 {
        2.0 * self.next_f32() - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.signed()).collect()
    }
}
