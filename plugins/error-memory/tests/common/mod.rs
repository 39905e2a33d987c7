//! The error-memory kind's test helpers: the model it is tested against, and drivers for
//! the tap → post → feedback cycle the way the runtime runs it. The stand-in host (fake
//! model, reference kernels, temp directories, assertions) is `graft_plugin_abi::testing`.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use graft_plugin_abi::abi_stable::std_types::{RSliceMut, RStr};
pub use graft_plugin_abi::testing::{FakeModel, FakeNode, TempDir, assert_err, kernels};
use graft_plugin_abi::{Adapter, LoadRequest, MatView, MatViewMut, NodeOp, PluginError, Post, Tap};
use graft_plugin_error_memory::{COMPENSATE_TARGET, Config, ErrorMemory, KEY_TARGET};

/// A key node `h` of width `d` (an activation), an output node `p` of width 1, a wide
/// node `wide` (width 3) and a graph input `x` (width `d`); graph names are `/<name>`.
pub fn memory_model(d: usize) -> FakeModel {
    FakeModel::new(vec![
        FakeNode::input("x", d),
        FakeNode::other("h", d),
        FakeNode::other("p", 1),
        FakeNode::weightless("wide", NodeOp::Linear, 3),
    ])
    .with_name_prefix("/")
    .with_fingerprint(0x0123_4567_89ab_cdef)
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
