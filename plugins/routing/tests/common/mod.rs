//! The routing kind's test helpers: the model it is tested against, temp files, a
//! synthetic-model builder, the tap → post driver, and an independent f64 reference
//! computed straight from the stored tensors. The stand-in host (fake model, reference
//! kernels, temp directories, assertions) is `graft_plugin_abi::testing`.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use graft_plugin_abi::abi_stable::std_types::{RSliceMut, RStr};
// The kernels whose scratch need grows with the rows: the kind sizes scratch per call.
pub use graft_plugin_abi::testing::kernels_row_scratch as kernels;
pub use graft_plugin_abi::testing::{FakeModel, FakeNode, TempDir, assert_err};
use graft_plugin_abi::{Adapter, MatView, MatViewMut, PluginError, Post, Tap};
use graft_plugin_routing::{Config, Mode, OutputIs, RoutingAdapter};

/// `emb` (a graph input, `d` wide), `head` (a linear, `out` wide), `prob` (a sigmoid).
/// Node indices start at 10, so that a target index is never mistaken for a node.
pub fn routing_model(d: usize, out: usize) -> FakeModel {
    FakeModel::new(vec![
        FakeNode::input("emb", d),
        FakeNode::weightless("head", graft_plugin_abi::NodeOp::Linear, out),
        FakeNode::other("prob", out),
    ])
    .with_first_node(10)
}

/// An adapter file in a temporary directory, removed with it on drop.
#[derive(Debug)]
pub struct TempFile {
    dir: TempDir,
    path: PathBuf,
}

impl TempFile {
    pub fn new(tag: &str) -> TempFile {
        let dir = TempDir::new(&format!("routing-{tag}"));
        let path = dir.path().join("adapter.safetensors");
        TempFile { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap()
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

/// Tensor names → values (for building variants by hand).
pub fn by_name(s: &Synth) -> HashMap<String, Vec<f32>> {
    s.tensors.iter().map(|(n, _, v)| (n.clone(), v.clone())).collect()
}
