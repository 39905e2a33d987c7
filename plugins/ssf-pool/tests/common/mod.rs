//! The ssf-pool kind's test helpers: hook drivers, raw safetensors writers and fixture
//! readers. The stand-in host (fake model, reference kernels, temp directories,
//! assertions) is `graft_plugin_abi::testing`.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::collections::HashMap;
use std::path::Path;

use graft_plugin_abi::abi_stable::std_types::{ROption, RSliceMut, RStr};
pub use graft_plugin_abi::testing::{FakeModel, FakeNode, TempDir, assert_close, assert_err, kernels};
use graft_plugin_abi::{Adapter, LinearDelta, LoadRequest, MatView, MatViewMut, PluginError, Post, Tap};
use graft_plugin_ssf_pool::SsfPoolAdapter;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

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
