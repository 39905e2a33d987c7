//! Runners for the three engines the parity tests compare: graft, ONNX Runtime and tract.
//!
//! Each runner takes the same named, shaped inputs and returns every output as a flat
//! row-major f32 vector keyed by output name, so a test states a comparison once and
//! applies it to any engine. ONNX Runtime is loaded dynamically (`ORT_DYLIB_PATH`) and
//! initialized once per process; when it is unavailable the caller skips (or, with
//! `GRAFT_CI=1`, fails) instead of letting `ort` panic.

#![allow(dead_code)] // each test binary uses a subset

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use graft::{Input, Model, Q8Math, Session, SessionOptions};

pub type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// One named input tensor `[rows, width]`.
#[derive(Clone, Debug)]
pub enum Data {
    /// f32 features.
    F32 { name: String, values: Vec<f32>, width: usize },
    /// i64 ids.
    I64 { name: String, values: Vec<i64>, width: usize },
}

impl Data {
    pub fn name(&self) -> &str {
        match self {
            Data::F32 { name, .. } | Data::I64 { name, .. } => name,
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Data::F32 { values, width, .. } => values.len() / width,
            Data::I64 { values, width, .. } => values.len() / width,
        }
    }
}

/// Outputs by name, each flat row-major.
pub type Outputs = BTreeMap<String, Vec<f32>>;

/// A scratch directory for one test under cargo's per-target temp dir.
pub fn scratch(test: &str) -> TestResult<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graft-parity").join(test);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs a graft model on `inputs` with one thread.
pub fn run_graft(model: &Model, inputs: &[Data]) -> TestResult<Outputs> {
    run_graft_with(model, inputs, Q8Math::default())
}

/// [`run_graft`] with q8 linears multiplied as `q8_math` says; `Q8Math::Exact` is what
/// an exported ONNX graph (DequantizeLinear, then f32 MatMul) computes.
pub fn run_graft_with(model: &Model, inputs: &[Data], q8_math: Q8Math) -> TestResult<Outputs> {
    let rows = inputs.first().map_or(1, Data::rows);
    let options = SessionOptions { max_batch: rows.max(1), threads: 1, q8_math, ..Default::default() };
    let mut session = Session::new(model, options)?;
    let bound: Vec<Input<'_>> = inputs
        .iter()
        .map(|d| match d {
            Data::F32 { name, values, width } => Input::dense(name, values, *width),
            Data::I64 { name, values, width } => Input::ids(name, values, *width),
        })
        .collect();
    let out = session.run(&bound)?;
    Ok(out
        .iter()
        .map(|(name, m)| (name.to_string(), (0..m.rows()).flat_map(|r| m.row(r).to_vec()).collect()))
        .collect())
}

/// The ONNX Runtime environment, created once per process; `Err` says why it is missing.
fn ort_environment() -> &'static Result<ort::environment::Environment, String> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = graft_tests::ort_dylib_path()?;
        let builder = ort::init_from(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        builder.with_name("graft-tests").build().map_err(|e| format!("cannot create an ONNX Runtime environment: {e}"))
    })
}

/// The ONNX Runtime environment, or `None` after printing the skip line for `test`
/// (panics instead when `GRAFT_CI=1`).
pub fn ort_env(test: &str) -> Option<&'static ort::environment::Environment> {
    match ort_environment() {
        Ok(env) => Some(env),
        Err(why) => {
            graft_tests::ort_unavailable(test, why);
            None
        }
    }
}

/// Runs an ONNX model (file bytes) with ONNX Runtime.
pub fn run_ort(env: &ort::environment::Environment, onnx: &[u8], inputs: &[Data]) -> TestResult<Outputs> {
    let mut session = ort::session::Session::builder(env)?.commit_from_memory(onnx)?;
    let mut values: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::with_capacity(inputs.len());
    for d in inputs {
        let v = match d {
            Data::F32 { values, width, .. } => {
                ort::value::Tensor::from_array(([d.rows(), *width], values.clone()))?.into()
            }
            Data::I64 { values, width, .. } => {
                ort::value::Tensor::from_array(([d.rows(), *width], values.clone()))?.into()
            }
        };
        values.push((d.name().to_string(), v));
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

/// Runs an ONNX model (file bytes) with tract, input shapes fixed to the batch given.
pub fn run_tract(model_bytes: &[u8], inputs: &[Data]) -> TestResult<Outputs> {
    use tract_onnx::prelude::*;

    let mut model = tract_onnx::onnx().model_for_read(&mut &model_bytes[..])?;
    let input_names: Vec<String> = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let output_names: Vec<String> = model
        .output_outlets()?
        .iter()
        .map(|o| model.outlet_label(*o).map_or_else(|| model.node(o.node).name.clone(), str::to_string))
        .collect();
    let mut ordered = Vec::with_capacity(input_names.len());
    for (i, name) in input_names.iter().enumerate() {
        let d = inputs.iter().find(|d| d.name() == name).ok_or_else(|| format!("no input `{name}` given"))?;
        let tensor = match d {
            Data::F32 { values, width, .. } => Tensor::from_shape(&[d.rows(), *width], values)?,
            Data::I64 { values, width, .. } => Tensor::from_shape(&[d.rows(), *width], values)?,
        };
        model = model.with_input_fact(i, InferenceFact::dt_shape(tensor.datum_type(), tensor.shape()))?;
        ordered.push(tensor.into_tvalue());
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let outs = plan.run(ordered.into_iter().collect())?;
    let mut result = Outputs::new();
    for (name, value) in output_names.into_iter().zip(outs.iter()) {
        result.insert(name, value.to_plain_array_view::<f32>()?.iter().copied().collect());
    }
    Ok(result)
}

/// The output `name` of `outputs`, or an error naming what was there.
pub fn output<'a>(outputs: &'a Outputs, name: &str, engine: &str) -> TestResult<&'a [f32]> {
    outputs
        .get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("{engine} produced no output `{name}` (has {:?})", outputs.keys()).into())
}
