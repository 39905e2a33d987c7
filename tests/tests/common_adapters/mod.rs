//! Shared setup of the adapter soak and broken-adapter tests: the `dlrm_small` fixture
//! model as an f32 `.graft` base, a fixed batch of its fixture inputs, per-test scratch
//! directories, and a one-thread run returning the `logit` column.
//!
//! One thread everywhere: the tests compare outputs bit for bit, and a one-thread run is
//! the reference every other configuration is checked against elsewhere (`lora.rs`).

#![allow(dead_code)] // each test binary uses a subset

use std::error::Error;
use std::path::{Path, PathBuf};

use graft::adapters::RowAdapters;
use graft::builder::{ModelBuilder, WeightFormats};
use graft::{Input, Model, Session, SessionOptions};
use graft_tests::{fixture, read_f32, read_i64};

pub type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// A fresh scratch directory for one test under cargo's per-target temp dir.
pub fn scratch(test: &str) -> TestResult<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graft-adapters").join(test);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The fixture adapter directory `name` (`lora_a`, `lora_b`, `dora_c`).
pub fn adapter_dir(name: &str) -> PathBuf {
    fixture(&format!("dlrm_small_lora/adapters/{name}"))
}

/// The `dlrm_small` fixture model as an importer-built [`ModelBuilder`].
pub fn base_builder() -> TestResult<ModelBuilder> {
    Ok(graft::onnx::import(&fixture("dlrm_small/model.onnx"))?)
}

/// `builder` written in f32 into `dir` and opened.
pub fn open_built(builder: &ModelBuilder, dir: &Path) -> TestResult<Model> {
    let path = dir.join("base.graft");
    builder.write(&path, WeightFormats::from_name("f32").ok_or("no f32 format")?)?;
    Ok(Model::open(&path)?)
}

/// The `dlrm_small` fixture model (f32 weights), written into `dir`.
pub fn base_model(dir: &Path) -> TestResult<Model> {
    open_built(&base_builder()?, dir)
}

/// The first `rows` rows of the fixture inputs.
#[derive(Clone, Debug)]
pub struct Batch {
    pub rows: usize,
    dense: Vec<f32>,
    ids: Vec<Vec<i64>>,
}

const NAMES: [&str; 4] = ["ids_f0", "ids_f1", "ids_f2", "ids_f3"];

impl Batch {
    pub fn load(rows: usize) -> TestResult<Batch> {
        let mut dense = read_f32(&fixture("dlrm_small/dense.f32"))?;
        if dense.len() < rows * 8 {
            return Err(format!("the fixture has {} rows, not {rows}", dense.len() / 8).into());
        }
        dense.truncate(rows * 8);
        let ids = NAMES
            .iter()
            .map(|name| {
                let mut v = read_i64(&fixture(&format!("dlrm_small/{name}_padded.i64")))?;
                v.truncate(rows * 3);
                Ok(v)
            })
            .collect::<TestResult<_>>()?;
        Ok(Batch { rows, dense, ids })
    }

    pub fn inputs(&self) -> Vec<Input<'_>> {
        let mut v = vec![Input::dense("dense", &self.dense, 8)];
        v.extend(self.ids.iter().zip(NAMES).map(|(ids, name)| Input::ids(name, ids, 3)));
        v
    }
}

/// A one-thread session sized for `rows`.
pub fn session(model: &Model, rows: usize) -> TestResult<Session> {
    Ok(Session::new(model, SessionOptions { max_batch: rows, threads: 1, ..Default::default() })?)
}

/// The `logit` column of one run with per-row adapters.
pub fn logits(session: &mut Session, batch: &Batch, rows: &RowAdapters) -> TestResult<Vec<f32>> {
    let out = session.run_with(&batch.inputs(), rows)?;
    Ok(out.get("logit").ok_or("no logit output")?.to_vec())
}

/// Bit patterns, for exact comparisons (NaN-safe, and `-0.0 != 0.0`).
pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}
