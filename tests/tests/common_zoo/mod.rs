//! The CTR model zoo (`tests/fixtures/zoo`): its manifest, the `.npy` inputs and torch
//! outputs of each model, graft models converted once per process and shared by every
//! test of the binary, and runners for graft, ONNX Runtime and tract that take the
//! fixture arrays with their own shapes (rank 1 to 3, batch first).

#![allow(dead_code)] // zoo.rs uses a subset

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use graft::adapters::RowAdapters;
use graft::builder::{ModelBuilder, WeightFormats};
use graft::graph::InputKind;
use graft::npy::{NpyArray, NpyData};
use graft::{Input, Model, Session, SessionOptions};
use graft_tests::fixture;

pub type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// Outputs by name, each flat row-major.
pub type Outputs = BTreeMap<String, Vec<f32>>;

/// One manifest input.
#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    pub dtype: String,
    /// Size of the id space (ids lie in `[1, vocab)`), for id inputs.
    pub vocab: Option<i64>,
}

/// One manifest model.
#[derive(Clone, Debug)]
pub struct Spec {
    pub id: String,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
    /// `model.dynamo.onnx` exists.
    pub dynamo: bool,
    /// The PEFT adapter directory, when the model has one.
    pub lora: Option<PathBuf>,
}

impl Spec {
    pub fn dir(&self) -> PathBuf {
        fixture(&format!("zoo/{}", self.id))
    }

    /// The ONNX file of `variant` (`Variant::Legacy` → `model.onnx`).
    pub fn onnx(&self, variant: Variant) -> PathBuf {
        self.dir().join(variant.file())
    }
}

/// Which export of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `torch.onnx.export(dynamo=False)`: `model.onnx`.
    Legacy,
    /// `torch.onnx.export(dynamo=True)`: `model.dynamo.onnx`.
    Dynamo,
}

impl Variant {
    pub fn file(self) -> &'static str {
        match self {
            Variant::Legacy => "model.onnx",
            Variant::Dynamo => "model.dynamo.onnx",
        }
    }
}

fn text(v: &serde_json::Value, key: &str) -> TestResult<String> {
    Ok(v.get(key)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("manifest: no string `{key}`"))?
        .to_string())
}

/// Every model of `tests/fixtures/zoo/manifest.json`, in manifest order (parsed once).
pub fn manifest() -> &'static [Spec] {
    static SPECS: OnceLock<Vec<Spec>> = OnceLock::new();
    SPECS.get_or_init(|| parse_manifest().unwrap_or_else(|e| panic!("tests/fixtures/zoo/manifest.json: {e}")))
}

fn parse_manifest() -> TestResult<Vec<Spec>> {
    let bytes = std::fs::read(fixture("zoo/manifest.json"))?;
    let root: serde_json::Value = serde_json::from_slice(&bytes)?;
    let models = root.get("models").and_then(serde_json::Value::as_array).ok_or("no `models` array")?;
    let mut specs = Vec::with_capacity(models.len());
    for m in models {
        let id = text(m, "id")?;
        let files = m.get("files").ok_or("no `files`")?;
        let inputs = m
            .get("inputs")
            .and_then(serde_json::Value::as_array)
            .ok_or("no `inputs`")?
            .iter()
            .map(|i| {
                Ok(InputSpec {
                    name: text(i, "name")?,
                    dtype: text(i, "dtype")?,
                    vocab: i.get("vocab").and_then(serde_json::Value::as_i64),
                })
            })
            .collect::<TestResult<Vec<_>>>()?;
        let outputs = m
            .get("outputs")
            .and_then(serde_json::Value::as_array)
            .ok_or("no `outputs`")?
            .iter()
            .map(|o| text(o, "name"))
            .collect::<TestResult<Vec<_>>>()?;
        let lora = match m.get("lora") {
            Some(l) if !l.is_null() => Some(fixture(&format!("zoo/{id}/{}", text(l, "dir")?))),
            _ => None,
        };
        let dynamo = files.get("dynamo_onnx").is_some();
        specs.push(Spec { id, inputs, outputs, dynamo, lora });
    }
    Ok(specs)
}

/// The manifest model `id`.
pub fn spec(id: &str) -> &'static Spec {
    manifest().iter().find(|s| s.id == id).unwrap_or_else(|| panic!("no model `{id}` in the zoo manifest"))
}

/// A batch of fixture inputs, by manifest input name, with their `.npy` shapes.
#[derive(Clone, Debug)]
pub struct Batch {
    pub rows: usize,
    pub arrays: Vec<(String, NpyArray)>,
}

impl Batch {
    /// The 8-row batch (`prefix` "") or the 3-row one (`prefix` "b3_").
    pub fn load(spec: &Spec, prefix: &str) -> TestResult<Batch> {
        let mut arrays = Vec::new();
        for i in &spec.inputs {
            let a = graft::npy::read(&spec.dir().join(format!("{prefix}{}.npy", i.name)))?;
            arrays.push((i.name.clone(), a));
        }
        // The batch is the length of a per-row input: every input but flat bag ids.
        let rows = arrays
            .iter()
            .filter(|(name, _)| name != "ids")
            .map(|(_, a)| a.shape.first().copied().unwrap_or(0))
            .max()
            .ok_or("no inputs")?;
        Ok(Batch { rows, arrays })
    }

    pub fn get(&self, name: &str) -> Option<&NpyArray> {
        self.arrays.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut NpyArray> {
        self.arrays.iter_mut().find(|(n, _)| n == name).map(|(_, a)| a)
    }
}

/// The torch outputs `<prefix><output>.npy` (prefix `out_`, `b3_out_` or `out_lora_`).
pub fn torch_outputs(spec: &Spec, prefix: &str) -> TestResult<Outputs> {
    let mut out = Outputs::new();
    for name in &spec.outputs {
        let a = graft::npy::read(&spec.dir().join(format!("{prefix}{name}.npy")))?;
        let NpyData::F32(v) = a.data else { return Err(format!("{prefix}{name}.npy is not f32").into()) };
        out.insert(name.clone(), v);
    }
    Ok(out)
}

/// The fixture array a graft input binds to: the same name, or for the flat bag inputs
/// the importer creates from torch's `EmbeddingBag` loop, the manifest's flat ids (the
/// input without a per-row shape) and offsets.
fn array_for<'b>(batch: &'b Batch, name: &str, kind: &InputKind) -> graft::Result<(&'b str, &'b NpyArray)> {
    let found = match kind {
        _ if batch.get(name).is_some() => batch.arrays.iter().find(|(n, _)| n == name),
        InputKind::BagIndices => batch.arrays.iter().find(|(n, _)| n == "ids"),
        InputKind::BagOffsets => batch.arrays.iter().find(|(n, _)| n == "offsets"),
        _ => None,
    };
    found
        .map(|(n, a)| (n.as_str(), a))
        .ok_or_else(|| graft::Error::MissingInput { input: format!("{name} (no fixture array binds to it)") })
}

/// graft inputs for `batch`, bound by the model's input names.
pub fn bind<'a>(model: &'a Model, batch: &'a Batch) -> graft::Result<Vec<Input<'a>>> {
    let mut inputs = Vec::new();
    for def in &model.graph().inputs {
        let (_, a) = array_for(batch, &def.name, &def.kind)?;
        inputs.push(match &a.data {
            NpyData::F32(v) => Input::f32(&def.name, v, &a.shape)?,
            NpyData::I64(v) => Input::i64(&def.name, v, &a.shape)?,
        });
    }
    Ok(inputs)
}

/// Flattens every output of a run.
fn collect(out: &graft::Outputs<'_>) -> Outputs {
    out.iter().map(|(name, m)| (name.to_string(), (0..m.rows()).flat_map(|r| m.row(r).to_vec()).collect())).collect()
}

/// Runs `model` on `batch` with `threads` threads, all rows on the base model or with
/// the per-row `adapters`.
pub fn run_graft(
    model: &Model,
    batch: &Batch,
    threads: usize,
    adapters: Option<&RowAdapters>,
) -> graft::Result<Outputs> {
    let inputs = bind(model, batch)?;
    let mut session = Session::new(model, SessionOptions { max_batch: batch.rows, threads, ..Default::default() })?;
    match adapters {
        None => Ok(collect(&session.run(&inputs)?)),
        Some(rows) => Ok(collect(&session.run_with(&inputs, rows)?)),
    }
}

type Slot<T> = Arc<OnceLock<Result<T, String>>>;

/// The value of `key` in `cache`, computed once by `make` (other tests asking for the
/// same key meanwhile wait for it; other keys proceed in parallel).
fn cached<T>(
    cache: &Mutex<HashMap<String, Slot<T>>>,
    key: String,
    make: impl FnOnce() -> Result<T, String>,
) -> Slot<T> {
    let slot = cache.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
    slot.get_or_init(make);
    slot
}

/// The imported ONNX model `variant` of `spec` (imported once per process); `Err`
/// carries the import error's message.
pub fn builder(spec: &Spec, variant: Variant) -> Slot<ModelBuilder> {
    static CACHE: OnceLock<Mutex<HashMap<String, Slot<ModelBuilder>>>> = OnceLock::new();
    cached(CACHE.get_or_init(Default::default), format!("{}/{variant:?}", spec.id), || {
        graft::onnx::import(&spec.onnx(variant)).map_err(|e| format!("{e}"))
    })
}

/// The weight formats called `name`: a `WeightFormats::from_name` name, or `q8_linear`
/// (q8 linears, f32 embedding tables).
pub fn formats(name: &str) -> Option<WeightFormats> {
    match name {
        "q8_linear" => Some(WeightFormats { linear: graft::WeightFormat::Q8, table: graft::WeightFormat::F32 }),
        _ => WeightFormats::from_name(name),
    }
}

/// `spec`'s `variant` converted to the weight formats `format` ([`formats`]), once per
/// process.
pub fn model(spec: &Spec, variant: Variant, format: &str) -> Slot<Model> {
    static CACHE: OnceLock<Mutex<HashMap<String, Slot<Model>>>> = OnceLock::new();
    cached(CACHE.get_or_init(Default::default), format!("{}/{variant:?}/{format}", spec.id), || {
        let slot = builder(spec, variant);
        let b = slot.get().ok_or("import did not run")?.as_ref().map_err(|e| format!("import: {e}"))?;
        let formats = formats(format).ok_or(format!("unknown format {format}"))?;
        let bytes = b.to_bytes(formats).map_err(|e| format!("{format} conversion: {e}"))?;
        Model::from_slice_copy(&bytes).map_err(|e| format!("opening the {format} model: {e}"))
    })
}

/// Runs an ONNX file with ONNX Runtime (external data read from its folder).
pub fn run_ort(env: &ort::environment::Environment, path: &Path, batch: &Batch) -> TestResult<Outputs> {
    let mut session = ort::session::Session::builder(env)?.commit_from_file(path)?;
    let mut values: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::new();
    for (name, a) in &batch.arrays {
        let v = match &a.data {
            NpyData::F32(v) => ort::value::Tensor::from_array((a.shape.clone(), v.clone()))?.into(),
            NpyData::I64(v) => ort::value::Tensor::from_array((a.shape.clone(), v.clone()))?.into(),
        };
        values.push((name.clone(), v));
    }
    let names: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
    let outputs = session.run(values)?;
    let mut result = Outputs::new();
    for name in names {
        let (_, data) = outputs[name.as_str()].try_extract_tensor::<f32>()?;
        result.insert(name, data.to_vec());
    }
    Ok(result)
}

/// Runs an ONNX file with tract, input shapes fixed to the batch's.
pub fn run_tract(path: &Path, batch: &Batch) -> TestResult<Outputs> {
    use tract_onnx::prelude::*;

    let mut model = tract_onnx::onnx().model_for_path(path)?;
    let input_names: Vec<String> = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let output_names: Vec<String> = model
        .output_outlets()?
        .iter()
        .map(|o| model.outlet_label(*o).map_or_else(|| model.node(o.node).name.clone(), str::to_string))
        .collect();
    let mut ordered = TVec::new();
    for (i, name) in input_names.iter().enumerate() {
        let a = batch.get(name).ok_or_else(|| format!("no input `{name}` in the fixture"))?;
        let tensor = match &a.data {
            NpyData::F32(v) => Tensor::from_shape(&a.shape, v)?,
            NpyData::I64(v) => Tensor::from_shape(&a.shape, v)?,
        };
        model = model.with_input_fact(i, InferenceFact::dt_shape(tensor.datum_type(), tensor.shape()))?;
        ordered.push(tensor.into_tvalue());
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let outs = plan.run(ordered)?;
    let mut result = Outputs::new();
    for (name, value) in output_names.into_iter().zip(outs.iter()) {
        result.insert(name, value.to_plain_array_view::<f32>()?.iter().copied().collect());
    }
    Ok(result)
}
