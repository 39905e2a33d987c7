//! A test host for the routing kind: a `ModelView` of named nodes with widths, a scalar
//! `HostKernels` table, temp files, a synthetic-model builder, the tap → post driver, and
//! an independent f64 reference computed straight from the stored tensors.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use graft_plugin_abi::abi_stable::prefix_type::PrefixTypeTrait;
use graft_plugin_abi::abi_stable::sabi_trait::TD_Opaque;
use graft_plugin_abi::abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use graft_plugin_abi::{
    Adapter, ElemFormat, ErrorCode, HostKernels, HostKernelsRef, KernelStatus, MatView, MatViewMut, ModelView,
    ModelView_TO, ModelViewRef, NodeInfo, NodeOp, PluginError, Post, Tap, WeightView,
};
use graft_plugin_routing::{Config, Mode, OutputIs, RoutingAdapter};

/// One node of the fake model: a name, an op and an output width.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: NodeOp,
    pub width: usize,
}

/// A model of named nodes; `resolve` maps a module path to the node of the same name.
#[derive(Debug, Clone, Default)]
pub struct FakeModel {
    pub nodes: Vec<Node>,
}

impl ModelView for FakeModel {
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        match self.nodes.iter().position(|n| n.name == module_path.as_str()) {
            Some(i) => {
                let n = &self.nodes[i];
                RResult::ROk(NodeInfo {
                    node: 10 + i as u32,
                    name: RString::from(format!("node_{}", n.name)),
                    op: n.op,
                    in_features: 0,
                    out_features: n.width,
                    has_bias: false,
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

    fn base_weight_row(&self, _node: u32, _row: usize, _out: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(ErrorCode::BAD_CALL, "", "the routing kind never reads base weights"))
    }

    fn base_bias(&self, _node: u32) -> ROption<RSlice<'_, f32>> {
        ROption::RNone
    }

    fn fingerprint(&self) -> u64 {
        0x726f_7574
    }
}

impl FakeModel {
    /// `emb` (a graph input, `d` wide), `head` (a linear, `out` wide), `prob` (a sigmoid).
    pub fn new(d: usize, out: usize) -> FakeModel {
        FakeModel {
            nodes: vec![
                Node { name: "emb".into(), op: NodeOp::Input, width: d },
                Node { name: "head".into(), op: NodeOp::Linear, width: out },
                Node { name: "prob".into(), op: NodeOp::Other, width: out },
            ],
        }
    }

    pub fn view(&self) -> ModelViewRef<'_> {
        ModelView_TO::from_ptr(self, TD_Opaque)
    }
}

extern "C" fn level() -> RStr<'static> {
    RStr::from_str("test-scalar")
}

/// The scalar kernel wants a row of the weight plus one float per row of scratch, so a
/// kind that sizes scratch for the wrong row count, or passes the wrong tail, is caught.
extern "C" fn scratch_floats(w: WeightView<'_>, rows: usize) -> usize {
    w.cols() + rows
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
    if scratch.len() < w.cols() + x.rows() {
        return KernelStatus::SCRATCH_TOO_SMALL;
    }
    let cols = w.cols();
    let wv = w.as_f32().unwrap();
    let wrow = &mut scratch[..cols];
    for j in 0..w.rows() {
        wrow.copy_from_slice(&wv[j * cols..(j + 1) * cols]);
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

/// A file removed on drop.
#[derive(Debug)]
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempFile(std::env::temp_dir().join(format!("graft-routing-{}-{tag}-{n}.safetensors", std::process::id())))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A tensor to write: name, shape, values.
pub type Owned = (String, Vec<usize>, Vec<f32>);

/// A routing model held in the test: its config and tensors as stored.
#[derive(Debug, Clone)]
pub struct Synth {
    pub config: Config,
    pub tensors: Vec<Owned>,
}

impl Synth {
    pub fn get(&self, name: &str) -> &[f32] {
        &self.tensors.iter().find(|t| t.0 == name).unwrap_or_else(|| panic!("no tensor {name}")).2
    }

    pub fn set(&mut self, name: &str, values: Vec<f32>) {
        let t = self.tensors.iter_mut().find(|t| t.0 == name).unwrap();
        assert_eq!(t.2.len(), values.len());
        t.2 = values;
    }

    pub fn remove(&mut self, name: &str) {
        self.tensors.retain(|t| t.0 != name);
    }

    /// Writes it with `save`.
    pub fn write(&self, tag: &str) -> TempFile {
        let f = TempFile::new(tag);
        let views: Vec<(&str, Vec<usize>, &[f32])> =
            self.tensors.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice())).collect();
        graft_plugin_routing::save(f.path(), &self.config, &views).unwrap();
        f
    }

    /// Random tensors of the right shapes for `config` (weights in [-1, 1), centers
    /// normalized like the reference's).
    pub fn random(config: Config, seed: u64) -> Synth {
        let mut rng = Rng(seed);
        let (k, d) = (config.clusters, config.input_width());
        let tensors = config
            .tensors()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let mut v: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
                if name == "centers" {
                    for c in v.chunks_exact_mut(d) {
                        let norm = c.iter().map(|x| x * x).sum::<f32>().sqrt();
                        c.iter_mut().for_each(|x| *x /= norm);
                    }
                    assert_eq!(v.len(), k * d);
                }
                (name, shape, v)
            })
            .collect();
        Synth { config, tensors }
    }

    /// The f64 reference for one row: (output in the node's units, κ).
    pub fn reference(&self, x: &[f32]) -> (Vec<f64>, usize) {
        let c = &self.config;
        let (k, d) = (c.clusters, c.input_width());
        let centers = self.get("centers");
        let scores: Vec<f64> =
            (0..k).map(|j| (0..d).map(|i| f64::from(x[i]) * f64::from(centers[j * d + i])).sum()).collect();
        let mut kappa = 0;
        for j in 1..k {
            if scores[j] > scores[kappa] {
                kappa = j;
            }
        }
        let tower = |j: usize| -> Vec<f64> {
            let mut a: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let layers = c.dims.len() - 1;
            for l in 0..layers {
                let (inf, outf) = (c.dims[l], c.dims[l + 1]);
                let w0 = self.get(&format!("shared.{l}.weight"));
                let wj = self.get(&format!("cluster.{j}.{l}.weight"));
                let mut next = vec![0f64; outf];
                for (o, n) in next.iter_mut().enumerate() {
                    for i in 0..inf {
                        *n += a[i] * f64::from(w0[i * outf + o]) * f64::from(wj[i * outf + o]);
                    }
                    if c.use_bias {
                        *n += f64::from(self.get(&format!("shared.{l}.bias"))[o])
                            + f64::from(self.get(&format!("cluster.{j}.{l}.bias"))[o]);
                    }
                    if l + 1 < layers {
                        *n = n.max(0.0);
                    }
                }
                a = next;
            }
            a
        };
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let out = match c.mode {
            Mode::Hard => {
                let z = tower(kappa);
                match c.output_is {
                    OutputIs::Logit => z,
                    OutputIs::Prob => z.into_iter().map(sig).collect(),
                }
            }
            Mode::Soft => {
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                let mut p = vec![0f64; c.output_width()];
                for (j, e) in e.iter().enumerate() {
                    for (p, z) in p.iter_mut().zip(tower(j)) {
                        *p += e / sum * sig(z);
                    }
                }
                match c.output_is {
                    OutputIs::Prob => p,
                    OutputIs::Logit => p
                        .into_iter()
                        .map(|p| {
                            let p = p.clamp(1e-7, 1.0 - 1e-7);
                            (p / (1.0 - p)).ln()
                        })
                        .collect(),
                }
            }
        };
        (out, kappa)
    }
}

/// xorshift64*: deterministic test data without a rand dependency.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Loads `file` against `model` through the crate's loader.
pub fn load(model: &FakeModel, file: &TempFile, options: &str) -> Result<RoutingAdapter, PluginError> {
    let req = graft_plugin_abi::LoadRequest {
        id: RStr::from_str("test"),
        source: RStr::from_str(file.as_str()),
        options: RStr::from_str(options),
    };
    graft_plugin_routing::load_file(&req, &model.view())
}

/// The outcome of a run: the output node's values and the run state, row-major.
#[derive(Debug, Clone)]
pub struct Run {
    pub y: Vec<f32>,
    pub state: Vec<f32>,
}

/// Runs the tap then the post over `x` (`rows × d`) and `y0` (the base output) in row
/// chunks of the given sizes, as a host would: state zeroed per chunk, scratch of exactly
/// `scratch_floats`, filled with NaN so that a read of unwritten scratch shows.
pub fn run<A: Adapter>(
    adapter: &A,
    x: &[f32],
    d: usize,
    y0: &[f32],
    scale: f32,
    chunks: &[usize],
) -> Result<Run, PluginError> {
    let rows = x.len() / d;
    assert_eq!(chunks.iter().sum::<usize>(), rows, "chunks must cover the rows");
    let out = y0.len() / rows;
    let sw = adapter.state_floats();
    let targets = adapter.targets();
    assert_eq!(targets.len(), 2);
    let mut y = y0.to_vec();
    let mut state = vec![0f32; rows * sw];
    let mut start = 0;
    for &n in chunks {
        let xs = &x[start * d..(start + n) * d];
        let st = &mut state[start * sw..(start + n) * sw];
        let mut scratch = vec![f32::NAN; adapter.scratch_floats(0, n, kernels())];
        assert_eq!(adapter.scratch_floats(1, n, kernels()), 0);
        adapter
            .tap(Tap {
                target: 0,
                x: MatView::new(xs, n, d, d).unwrap(),
                state: MatViewMut::new(st, n, sw, sw).unwrap(),
                scale,
                kernels: kernels(),
                scratch: RSliceMut::from_mut_slice(&mut scratch),
            })
            .into_result()?;
        let mut tickets = vec![0u64; n];
        adapter
            .post(Post {
                target: 1,
                y: MatViewMut::new(&mut y[start * out..(start + n) * out], n, out, out).unwrap(),
                state: MatView::new(st, n, sw, sw).unwrap(),
                tickets: RSliceMut::from_mut_slice(&mut tickets),
                scale,
                kernels: kernels(),
                scratch: RSliceMut::from_mut_slice(&mut []),
            })
            .into_result()?;
        assert!(tickets.iter().all(|&t| t == 0), "routing issues no tickets");
        start += n;
    }
    Ok(Run { y, state })
}

pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(err <= tol * w.abs().max(1.0), "index {i}: got {g}, want {w} (tol {tol}); {got:?} vs {want:?}");
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

/// Tensor names → values (for building variants by hand).
pub fn by_name(s: &Synth) -> HashMap<String, Vec<f32>> {
    s.tensors.iter().map(|(n, _, v)| (n.clone(), v.clone())).collect()
}
