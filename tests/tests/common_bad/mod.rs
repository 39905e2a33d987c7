//! Helpers shared by the bad-input suites (`malformed`, `malformed_prop`,
//! `safetensors_compat`): a small valid model and a "run it with zeros" driver.

#![allow(dead_code)] // each test binary uses a different subset

use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::graph::{Activation, BagMode, InputKind};
use graft::{Input, Model, Session, SessionOptions};

/// Deterministic, finite, non-zero values.
pub fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + seed) * 0.37).sin() * 0.5).collect()
}

/// `dense[4] → fc (linear 4→8, bias) → act (relu)`, `ids[2] → emb (embedding_bag, table
/// 10×4)`, `cat = concat(act, emb)` (width 12), `head` (linear 12→1, bias) → output
/// `score`. Every tensor kind the container knows (bias vectors, linear weights, a
/// table) and every alignment pad appears.
pub fn small_model() -> ModelBuilder {
    let mut b = ModelBuilder::new("small");
    b.dense_input("dense", 4);
    b.ids_input("ids", 2);
    b.linear("fc", "dense", Matrix::new(8, 4, values(32, 1.0)), Some(values(8, 2.0)));
    b.activation("act", Activation::Relu, "fc");
    b.embedding_bag("emb", &["ids"], Matrix::new(10, 4, values(40, 3.0)), BagMode::Sum);
    b.concat("cat", &["act", "emb"]);
    b.linear("head", "cat", Matrix::new(1, 12, values(12, 4.0)), Some(vec![0.25]));
    b.output("score", "head");
    b
}

/// [`small_model`] serialized in the weight format called `format` (`f32`, `q8`, …).
pub fn small_container(format: &str) -> Vec<u8> {
    let formats = WeightFormats::from_name(format).expect("known format");
    small_model().to_bytes(formats).expect("valid model serializes")
}

/// Activation floats beyond which [`run_zeros`] declines to plan a session (a mutated
/// header may declare absurd but consistent widths; allocating for them is not the
/// point of these tests).
pub const MAX_FLOATS: usize = 1 << 22;

/// Plans `model` with `max_batch` 4 on every available kernel table and runs it on
/// `rows` rows of zeros (ids 0, one id per bag). Returns the number of runs made; `Ok(0)`
/// when the model is too large to try. A model that parsed must plan and run: any error
/// here is returned to the caller, which decides whether it is acceptable.
pub fn run_zeros(model: &Model, rows: usize) -> graft::Result<usize> {
    let g = model.graph();
    let widths = g.inputs.iter().map(|d| match d.kind {
        InputKind::Dense { width } => width,
        InputKind::Ids { slots } => slots,
        InputKind::BagIndices | InputKind::BagOffsets => 1,
    });
    let total = widths.chain(g.nodes.iter().map(|n| n.width)).try_fold(0usize, |a, w| a.checked_add(w));
    if total.is_none_or(|t| t.saturating_mul(4) > MAX_FLOATS) {
        return Ok(0);
    }
    let data: Vec<Data> = g
        .inputs
        .iter()
        .map(|d| match d.kind {
            InputKind::Dense { width } => Data::F32(vec![0.0; rows * width]),
            InputKind::Ids { slots } => Data::I64(vec![0; rows * slots]),
            InputKind::BagIndices => Data::I64(vec![0; rows]),
            InputKind::BagOffsets => Data::I64((0..rows as i64).collect()),
        })
        .collect();
    let inputs: Vec<Input<'_>> = g
        .inputs
        .iter()
        .zip(&data)
        .map(|(d, data)| match (d.kind, data) {
            (InputKind::Dense { width }, Data::F32(v)) => Input::dense(&d.name, v, width),
            (InputKind::Ids { slots }, Data::I64(v)) => Input::ids(&d.name, v, slots),
            (_, Data::I64(v)) => Input::flat(&d.name, v),
            (_, Data::F32(_)) => unreachable!("only dense inputs get f32 data"),
        })
        .collect();
    let mut runs = 0;
    for kernels in graft::kernels::available() {
        let options = SessionOptions { max_batch: 4, kernels: Some(kernels.level), ..SessionOptions::default() };
        let mut session = Session::new(model, options)?;
        let out = session.run(&inputs)?;
        assert_eq!(out.rows(), rows);
        assert_eq!(out.len(), g.outputs.len());
        runs += 1;
    }
    Ok(runs)
}

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}
