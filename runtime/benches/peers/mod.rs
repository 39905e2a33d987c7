//! The peers graft is measured against, behind one small interface: ONNX Runtime (via
//! `ort`, library from `ORT_DYLIB_PATH`) and tract, each loading the same ONNX model that
//! graft runs and running it on the same inputs.
//!
//! ORT is optional locally (a missing library prints a SKIP line and its benchmarks are
//! left out); with `GRAFT_CI=1` it is required.
//!
//! For LoRA, ORT's peer is its own multi-LoRA mechanism ([`OrtLoraRunner`]): the model
//! exported by `graft::onnx::to_proto_with_lora` (LoRA matrices as overridable graph
//! inputs) plus an `.onnx_adapter` file written by `graft::onnx::write_onnx_adapter`,
//! made active through `RunOptions`. Everything is produced from Rust at bench time.

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
    /// Rows `range` of this tensor.
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> Feed {
        match self {
            Feed::F32 { name, data, width } => Feed::F32 {
                name: name.clone(),
                data: data[range.start * width..range.end * width].to_vec(),
                width: *width,
            },
            Feed::I64 { name, data, width } => Feed::I64 {
                name: name.clone(),
                data: data[range.start * width..range.end * width].to_vec(),
                width: *width,
            },
        }
    }

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

/// ONNX Runtime's environment, or `None` (with a SKIP line) where the library is missing.
pub fn environment() -> Option<&'static ort::environment::Environment> {
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

/// ONNX Runtime's version (the library file's suffix, e.g. `1.32.0` from
/// `libonnxruntime.so.1.32.0`) and its build info, or `None` where the library is missing.
pub fn ort_version() -> Option<String> {
    environment()?;
    let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_default();
    let version = path.rsplit_once(".so.").map_or("", |(_, v)| v).to_string();
    let info = ort::info().trim_start_matches("ORT Build Info: ");
    Some(if version.is_empty() { info.to_string() } else { format!("{version} ({info})") })
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
        self.inputs = ort_values(feeds);
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

/// Feeds as named ORT tensors.
fn ort_values(feeds: &[Feed]) -> Vec<(String, ort::value::DynValue)> {
    feeds
        .iter()
        .map(|f| match f {
            Feed::F32 { name, data, width } => {
                (name.clone(), ort::value::Tensor::from_array(([f.rows(), *width], data.clone())).unwrap().into_dyn())
            }
            Feed::I64 { name, data, width } => {
                (name.clone(), ort::value::Tensor::from_array(([f.rows(), *width], data.clone())).unwrap().into_dyn())
            }
        })
        .collect()
}

/// The ORT LoRA peer's two files for `model`: the ONNX export with LoRA inputs on every
/// linear (rank `rank`, scale `scale`) and an `.onnx_adapter` with random A and B
/// (uniform in ±0.1, seeded) for all of them.
pub fn ort_lora_files(model: &graft::Model, rank: usize, scale: f32, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let lora = graft::onnx::LoraInputs::every_linear(model, rank, scale);
    let onnx = graft::onnx::encode_proto(&graft::onnx::to_proto_with_lora(model, &lora).unwrap()).unwrap();
    (onnx, ort_lora_adapter(model, rank, scale, seed))
}

/// Only the `.onnx_adapter` of [`ort_lora_files`] (same values for the same seed), for
/// further adapters of one exported model without exporting it again.
pub fn ort_lora_adapter(model: &graft::Model, rank: usize, scale: f32, seed: u64) -> Vec<u8> {
    let lora = graft::onnx::LoraInputs::every_linear(model, rank, scale);
    let mut rng = graft::synthetic::Rng::new(seed);
    let params: Vec<(String, Vec<usize>, Vec<f32>)> = lora
        .parameter_dims(model)
        .unwrap()
        .into_iter()
        .map(|(name, dims)| {
            let values = rng.symmetric(dims.iter().product(), 0.1);
            (name, dims, values)
        })
        .collect();
    let refs: Vec<(String, Vec<usize>, &[f32])> =
        params.iter().map(|(n, d, v)| (n.clone(), d.clone(), v.as_slice())).collect();
    graft::onnx::write_onnx_adapter(&refs, 1, 1)
}

/// An ONNX Runtime session running ORT's own LoRA (multi-LoRA): a model whose LoRA
/// matrices are overridable graph inputs, with an adapter holding them made active per
/// run through `RunOptions`, inputs prepared once.
///
/// Cost model, from ONNX Runtime's C API (`OrtApis::Run`): each run with active adapters
/// appends the adapter's parameter `OrtValue`s to the feed list — pointers only, the
/// tensors are not copied. The adapter is loaded here without a device allocator, so
/// its tensors are CPU memory (copied once out of the file bytes by
/// `Adapter::from_memory`); on the CPU execution provider nothing is copied per run. On
/// a GPU provider, a CPU-resident adapter would be copied to the device on *every* run
/// like any CPU feed; passing the session's device allocator to `Adapter::from_memory`
/// copies it once at load instead.
///
/// One adapter set applies to the whole batch: ORT cannot mix adapters per row (the
/// LoRA matrices are ordinary inputs, one value per name per run), so a batch needing
/// different adapters must be split into one run per adapter.
pub struct OrtLoraRunner {
    session: ort::session::Session,
    inputs: Vec<(String, ort::value::DynValue)>,
    /// Run options carrying the active adapter.
    with_adapter: ort::session::RunOptions,
    /// Run options with no adapter: the LoRA inputs keep their zero defaults.
    without: ort::session::RunOptions,
    /// Further adapters ([`add_adapter`](Self::add_adapter)), one run-options each.
    extra: Vec<ort::session::RunOptions>,
    /// Input sets for [`run_chunk`](Self::run_chunk) (e.g. the per-adapter slices of a
    /// mixed batch).
    chunks: Vec<Vec<(String, ort::value::DynValue)>>,
}

impl OrtLoraRunner {
    /// Loads `onnx` (exported with LoRA inputs) with `threads` intra-op threads and
    /// `adapter` (`.onnx_adapter` bytes) as the active adapter, fed with `feeds`; `None`
    /// if ORT is unavailable.
    pub fn load(onnx: &[u8], adapter: &[u8], feeds: &[Feed], threads: usize) -> Option<OrtLoraRunner> {
        let env = environment()?;
        let session = ort::session::Session::builder(env)
            .unwrap()
            .with_intra_threads(threads)
            .unwrap()
            .commit_from_memory(onnx)
            .unwrap();
        let adapter = ort::session::Adapter::from_memory(adapter, None).unwrap();
        let mut with_adapter = ort::session::RunOptions::new().unwrap();
        with_adapter.add_adapter(&adapter).unwrap();
        let without = ort::session::RunOptions::new().unwrap();
        Some(OrtLoraRunner {
            session,
            inputs: ort_values(feeds),
            with_adapter,
            without,
            extra: Vec::new(),
            chunks: Vec::new(),
        })
    }

    /// Loads another adapter (`.onnx_adapter` bytes) for [`run_chunk`](Self::run_chunk);
    /// returns its index (the adapter given to `load` is index 0).
    pub fn add_adapter(&mut self, adapter: &[u8]) -> usize {
        let adapter = ort::session::Adapter::from_memory(adapter, None).unwrap();
        let mut options = ort::session::RunOptions::new().unwrap();
        options.add_adapter(&adapter).unwrap();
        self.extra.push(options);
        self.extra.len()
    }

    /// Sets the input sets of [`run_chunk`](Self::run_chunk).
    pub fn feed_chunks(&mut self, chunks: &[Vec<Feed>]) {
        self.chunks = chunks.iter().map(|c| ort_values(c)).collect();
    }

    /// One inference of input set `chunk` with adapter `adapter` active (0: the one given
    /// to `load`); returns the first element of the first output. A batch whose rows
    /// need different adapters is one such run per adapter: ORT applies one adapter set
    /// per run.
    pub fn run_chunk(&mut self, chunk: usize, adapter: usize) -> f32 {
        let inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
            self.chunks[chunk].iter().map(|(n, v)| (n.clone(), v.into())).collect();
        let options = if adapter == 0 { &self.with_adapter } else { &self.extra[adapter - 1] };
        let out = self.session.run_with_options(inputs, options).unwrap();
        let (_, data) = out[0].try_extract_tensor::<f32>().unwrap();
        data[0]
    }

    /// Sets the inputs of subsequent runs.
    pub fn feed(&mut self, feeds: &[Feed]) {
        self.inputs = ort_values(feeds);
    }

    /// One inference with the adapter active; returns the first element of the first
    /// output.
    pub fn run(&mut self) -> f32 {
        self.run_with(true)
    }

    /// One inference of the same session without the adapter (zero LoRA inputs).
    pub fn run_base(&mut self) -> f32 {
        self.run_with(false)
    }

    fn run_with(&mut self, adapter: bool) -> f32 {
        let inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
            self.inputs.iter().map(|(n, v)| (n.clone(), v.into())).collect();
        let options = if adapter { &self.with_adapter } else { &self.without };
        let out = self.session.run_with_options(inputs, options).unwrap();
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

/// One input tensor of any rank (`dims[0]` is the batch), owned: the zoo models' inputs
/// (`[batch]` ids, `[batch, 10]` sequences, `[batch, 3]` dense ...).
#[derive(Clone, Debug)]
pub struct NdFeed {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: NdData,
}

/// The values of an [`NdFeed`].
#[derive(Clone, Debug)]
pub enum NdData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl NdFeed {
    /// As a graft input.
    pub fn input(&self) -> Input<'_> {
        match &self.data {
            NdData::F32(d) => Input::f32(&self.name, d, &self.dims).unwrap(),
            NdData::I64(d) => Input::i64(&self.name, d, &self.dims).unwrap(),
        }
    }

    fn ort_value(&self) -> ort::value::DynValue {
        match &self.data {
            NdData::F32(d) => ort::value::Tensor::from_array((self.dims.clone(), d.clone())).unwrap().into_dyn(),
            NdData::I64(d) => ort::value::Tensor::from_array((self.dims.clone(), d.clone())).unwrap().into_dyn(),
        }
    }

    fn tract_value(&self) -> tract_onnx::prelude::TValue {
        use tract_onnx::prelude::*;
        let t = match &self.data {
            NdData::F32(d) => Tensor::from_shape(&self.dims, d).unwrap(),
            NdData::I64(d) => Tensor::from_shape(&self.dims, d).unwrap(),
        };
        t.into_tvalue()
    }
}

/// An ONNX Runtime session over a pool of prepared input sets (fresh inputs per run:
/// run `i` reads set `i % len`).
pub struct OrtPool {
    session: ort::session::Session,
    sets: Vec<Vec<(String, ort::value::DynValue)>>,
}

impl OrtPool {
    /// Loads `onnx` with `threads` intra-op threads (and one inter-op thread), or `None`
    /// if ORT is unavailable.
    pub fn load(onnx: &Path, threads: usize) -> Option<OrtPool> {
        let env = environment()?;
        let session = ort::session::Session::builder(env)
            .unwrap()
            .with_intra_threads(threads)
            .unwrap()
            .with_inter_threads(1)
            .unwrap()
            .commit_from_file(onnx)
            .unwrap();
        Some(OrtPool { session, sets: Vec::new() })
    }

    /// Replaces the input sets.
    pub fn feed_sets(&mut self, sets: &[Vec<NdFeed>]) {
        self.sets = sets.iter().map(|s| s.iter().map(|f| (f.name.clone(), f.ort_value())).collect()).collect();
    }

    /// One inference of set `i`; returns the first element of the first output.
    pub fn run(&mut self, i: usize) -> f32 {
        let set = &self.sets[i % self.sets.len()];
        // Borrowed names: no allocation per input inside the timed call.
        let inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> =
            set.iter().map(|(n, v)| (n.as_str(), v.into())).collect();
        let out = self.session.run(inputs).unwrap();
        let (_, data) = out[0].try_extract_tensor::<f32>().unwrap();
        data[0]
    }

    /// All values of the outputs `names` for set `i`, flattened (row-major), or ORT's
    /// error (some exports only run at some batch sizes).
    pub fn outputs(&mut self, i: usize, names: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let set = &self.sets[i % self.sets.len()];
        let inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
            set.iter().map(|(n, v)| (n.clone(), v.into())).collect();
        let out = self.session.run(inputs).map_err(|e| e.message().lines().next().unwrap_or_default().to_string())?;
        Ok(names.iter().map(|n| out[n.as_str()].try_extract_tensor::<f32>().unwrap().1.to_vec()).collect())
    }
}

/// A tract plan for fixed input shapes over a pool of prepared input sets.
pub struct TractPool {
    plan: std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>,
    sets: Vec<tract_onnx::prelude::TVec<tract_onnx::prelude::TValue>>,
}

impl TractPool {
    /// Loads and optimizes `path` for the shapes of `sets[0]` (all sets share them), or
    /// says why tract cannot run it (an error or a panic inside tract).
    pub fn load(path: &Path, sets: &[Vec<NdFeed>]) -> Result<TractPool, String> {
        use tract_onnx::prelude::*;
        let path = path.to_path_buf();
        let sets = sets.to_vec();
        let load = move || -> TractResult<TractPool> {
            let mut model = tract_onnx::onnx().model_for_path(&path)?;
            let names: Vec<String> = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
            let find = |set: &[NdFeed], name: &str| set.iter().position(|f| f.name == name);
            for (i, name) in names.iter().enumerate() {
                let f = &sets[0]
                    [find(&sets[0], name).ok_or_else(|| TractError::msg(format!("no feed for input {name}")))?];
                let dt = match f.data {
                    NdData::F32(_) => f32::datum_type(),
                    NdData::I64(_) => i64::datum_type(),
                };
                model = model.with_input_fact(i, InferenceFact::dt_shape(dt, &f.dims))?;
            }
            let plan = model.into_optimized()?.into_runnable()?;
            let sets = sets
                .iter()
                .map(|set| names.iter().map(|n| set[find(set, n).unwrap()].tract_value()).collect())
                .collect();
            Ok(TractPool { plan, sets })
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
            Ok(Ok(pool)) => Ok(pool),
            Ok(Err(e)) => Err(format!("{e:#}").lines().next().unwrap_or_default().to_string()),
            Err(_) => Err("tract panicked while loading".into()),
        }
    }

    /// One inference of set `i`; returns the first element of the first output.
    pub fn run(&self, i: usize) -> f32 {
        let out = self.plan.run(self.sets[i % self.sets.len()].clone()).unwrap();
        out[0].to_plain_array_view::<f32>().unwrap().iter().next().copied().unwrap_or(0.0)
    }

    /// All values of every output for set `i`, flattened, in graph output order.
    pub fn outputs(&self, i: usize) -> Result<Vec<Vec<f32>>, String> {
        let out = self.plan.run(self.sets[i % self.sets.len()].clone()).map_err(|e| format!("{e}"))?;
        Ok(out
            .iter()
            .map(|t| t.to_plain_array_view::<f32>().map(|v| v.iter().copied().collect()).unwrap_or_default())
            .collect())
    }
}

/// A directory for generated benchmark models (under `target/`).
pub fn scratch() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
