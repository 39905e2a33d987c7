//! The peers graft is measured against, behind one small interface: ONNX Runtime (via
//! `ort`, library from `ORT_DYLIB_PATH`) and tract, each loading the same ONNX model that
//! graft runs and running it on the same inputs.
//!
//! ORT is optional locally (a missing library prints a SKIP line and its benchmarks are
//! left out); with `GRAFT_CI=1` it is required.

#![allow(dead_code, clippy::unwrap_used)] // each bench binary uses a subset

use std::path::Path;
use std::sync::OnceLock;

use graft::Input;
use graft::synthetic::GraphInputs;

/// Whether criterion runs in test mode (`cargo test --benches`, or `--test`): benches
/// then use tiny models so the whole suite finishes in seconds.
pub fn quick() -> bool {
    let args: Vec<String> = std::env::args().collect();
    !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test")
}

/// One input tensor `[rows, width]`, owned.
#[derive(Clone, Debug)]
pub enum Feed {
    F32 { name: String, data: Vec<f32>, width: usize },
    I64 { name: String, data: Vec<i64>, width: usize },
}

impl Feed {
    fn rows(&self) -> usize {
        match self {
            Feed::F32 { data, width, .. } => data.len() / width,
            Feed::I64 { data, width, .. } => data.len() / width,
        }
    }

    /// Owned copies of graft inputs (dense and padded ids only).
    pub fn from_inputs(inputs: &[Input<'_>]) -> Vec<Feed> {
        inputs
            .iter()
            .map(|i| match i.tensor {
                graft::TensorView::F32 { data, shape } => {
                    Feed::F32 { name: i.name.into(), data: data.to_vec(), width: *shape.dims().last().unwrap() }
                }
                graft::TensorView::I64 { data, shape } => {
                    Feed::I64 { name: i.name.into(), data: data.to_vec(), width: *shape.dims().last().unwrap_or(&1) }
                }
            })
            .collect()
    }

    /// Random inputs for a graft model, as feeds.
    pub fn random(model: &graft::Model, rows: usize, seed: u64) -> Vec<Feed> {
        Feed::from_inputs(&GraphInputs::new(model.graph(), rows, seed).inputs())
    }
}

fn environment() -> Option<&'static ort::environment::Environment> {
    static ENV: OnceLock<Option<ort::environment::Environment>> = OnceLock::new();
    ENV.get_or_init(|| {
        let found = std::env::var_os("ORT_DYLIB_PATH").filter(|p| Path::new(p).is_file());
        let env = found.and_then(|p| ort::init_from(&p).ok()).and_then(|b| b.with_name("graft-bench").build().ok());
        if env.is_none() {
            assert!(
                std::env::var("GRAFT_CI").map_or(true, |v| v != "1"),
                "ONNX Runtime is required when GRAFT_CI=1 (set ORT_DYLIB_PATH)"
            );
            println!("SKIP: ONNX Runtime benchmarks: library not found (set ORT_DYLIB_PATH)");
        }
        env
    })
    .as_ref()
}

/// An ONNX Runtime session with its inputs prepared once.
pub struct OrtRunner {
    session: ort::session::Session,
    inputs: Vec<(String, ort::value::DynValue)>,
}

impl OrtRunner {
    /// Loads `onnx` with `threads` intra-op threads, or `None` if ORT is unavailable.
    pub fn load(onnx: &Path, threads: usize) -> Option<OrtRunner> {
        let env = environment()?;
        let session = ort::session::Session::builder(env)
            .unwrap()
            .with_intra_threads(threads)
            .unwrap()
            .commit_from_file(onnx)
            .unwrap();
        Some(OrtRunner { session, inputs: Vec::new() })
    }

    /// Sets the inputs of subsequent runs.
    pub fn feed(&mut self, feeds: &[Feed]) {
        self.inputs = feeds
            .iter()
            .map(|f| {
                let v: ort::value::DynValue = match f {
                    Feed::F32 { name: _, data, width } => {
                        ort::value::Tensor::from_array(([f.rows(), *width], data.clone())).unwrap().into_dyn()
                    }
                    Feed::I64 { name: _, data, width } => {
                        ort::value::Tensor::from_array(([f.rows(), *width], data.clone())).unwrap().into_dyn()
                    }
                };
                let name = match f {
                    Feed::F32 { name, .. } | Feed::I64 { name, .. } => name.clone(),
                };
                (name, v)
            })
            .collect();
    }

    /// One inference; returns the first element of the first output.
    pub fn run(&mut self) -> f32 {
        let inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
            self.inputs.iter().map(|(n, v)| (n.clone(), v.into())).collect();
        let out = self.session.run(inputs).unwrap();
        let (_, data) = out[0].try_extract_tensor::<f32>().unwrap();
        data[0]
    }
}

/// A tract plan for a fixed batch, with its inputs prepared once.
pub struct TractRunner {
    plan: std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>,
    inputs: tract_onnx::prelude::TVec<tract_onnx::prelude::TValue>,
}

impl TractRunner {
    /// Loads and optimizes `onnx` for exactly these feeds' shapes.
    pub fn load(path: &Path, feeds: &[Feed]) -> TractRunner {
        use tract_onnx::prelude::*;
        let mut model = tract_onnx::onnx().model_for_path(path).unwrap();
        let names: Vec<String> =
            model.input_outlets().unwrap().iter().map(|o| model.node(o.node).name.clone()).collect();
        let mut inputs = TVec::new();
        for (i, name) in names.iter().enumerate() {
            let f = feeds
                .iter()
                .find(|f| matches!(f, Feed::F32 { name: n, .. } | Feed::I64 { name: n, .. } if n == name))
                .unwrap();
            let t = match f {
                Feed::F32 { data, width, .. } => Tensor::from_shape(&[f.rows(), *width], data).unwrap(),
                Feed::I64 { data, width, .. } => Tensor::from_shape(&[f.rows(), *width], data).unwrap(),
            };
            model = model.with_input_fact(i, InferenceFact::dt_shape(t.datum_type(), t.shape())).unwrap();
            inputs.push(t.into_tvalue());
        }
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        TractRunner { plan, inputs }
    }

    /// One inference; returns the first element of the first output.
    pub fn run(&self) -> f32 {
        let out = self.plan.run(self.inputs.clone()).unwrap();
        out[0].to_plain_array_view::<f32>().unwrap().iter().next().copied().unwrap_or(0.0)
    }
}

/// A directory for generated benchmark models (under `target/`).
pub fn scratch() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
